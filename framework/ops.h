// The public op API: include this to get every tensor op.
#pragma once
#include "framework/autograd.h"
#include "framework/ops/creation.h"
#include "framework/ops/elementwise.h"
#include "framework/ops/linalg.h"
#include "framework/ops/nn.h"
#include "framework/ops/reduce.h"
#include "framework/ops/shape.h"
#include "framework/tensor.h"
