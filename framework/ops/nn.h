// Neural-network functional ops (torch.nn.functional), in two groups:
//   nn_core.h: linear, embedding, normalization, softmax, losses, dropout, attention
//   nn_conv.h: convolution, pooling, batch normalization
#pragma once
#include "framework/ops/nn_conv.h"
#include "framework/ops/nn_core.h"
