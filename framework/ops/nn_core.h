// (being written)
#pragma once
#include "framework/tensor.h"
