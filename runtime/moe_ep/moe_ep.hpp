// moe-ep's public C++ API: everything a trainer needs to embed expert-parallel MoE layers.
//
//   #include <moe_ep/moe_ep.hpp>          (CMake: find_package(moe_ep), target moe::runtime)
//
//   moe_ep::MpiEnvironment mpi(argc, argv);
//   auto world = moe_ep::mpi_communicator(MPI_COMM_WORLD);
//   auto groups = moe_ep::ParallelGroups::create(*world, /*ep_size=*/world->size());
//   moe_ep::Config config;  config.num_experts = 8;  config.d_model = 512;  config.d_hidden = 1024;
//   moe_ep::Layer layer(config, *groups.ep);
//   moe_ep::ForwardContext ctx;
//   layer.forward(x, y, ctx);  ...  layer.backward(x, dy, dx, ctx);
//   layer.reduce_gradients(groups, moe_ep::GradReduction::mean);
//
// What is here, each documented in its header:
//   configuration      Config (runtime/config.hpp): SPEC.md's options with their defaults
//   layer, context     Layer, ForwardContext (moe_ep/layer.hpp): forward, inference, backward,
//                      routing, parameters by SPEC.md name with their owner, bias update
//   dispatcher         Dispatcher, DispatchContext, Routing (moe_ep/dispatcher.hpp): the exchange
//                      level alone, for a trainer that routes and runs its own experts
//   communicators      Communicator, mpi_communicator, MpiEnvironment (moe_ep/communicator.hpp)
//   parallel groups    ParallelGroups, GradReduction (runtime/parallel_groups.hpp)
//   checkpoints        save_checkpoint, open_checkpoint, load_checkpoint (runtime/checkpoint.hpp)
//   errors             Error (runtime/error.hpp): the same message on every rank
// It pulls in none of the runtime's internals (the dispatch plan, the exchange thread, oneDNN).
#pragma once

#include "moe_config.hpp"
#include "moe_ep/communicator.hpp"
#include "moe_ep/dispatcher.hpp"
#include "moe_ep/layer.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/error.hpp"
#include "runtime/parallel_groups.hpp"

namespace moe_ep {

using Error = moe::Error;
using ParallelGroups = moe::ParallelGroups;
using GradReduction = moe::GradReduction;
using CheckpointTensor = moe::CheckpointTensor;
using CheckpointShard = moe::CheckpointShard;

}  // namespace moe_ep
