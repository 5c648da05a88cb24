"""Scaling out: device meshes, logical-axis sharding rules, sharded train steps and sampling,
multi-host start-up, sharded checkpoints and memory planning (`python -m score.parallel.plan`).

See `docs/scaling.md` for launch commands on TPU pod slices and GPU clusters.
"""

from score.parallel.checkpoint import ShardedCheckpointer, abstract_like
from score.parallel.distributed import (distributed_config, gather, initialize_distributed,
                                        is_main_process, process_batch_slice, process_seed,
                                        sync)
from score.parallel.mesh import (AXES, RULES, MeshShape, TrainShardings, activation_sharding,
                                 batch_divisor, batch_sharding, kv_cache_shardings,
                                 logical_axes, logical_to_spec, make_mesh, mesh_config,
                                 mesh_from_config, mesh_shape, named_sharding,
                                 opt_state_shardings, param_shardings, parse_mesh, put, replicated,
                                 shard_batch, shard_params, shard_train_state, state_shardings)
from score.parallel.sampling import shard_model_state, sharded_generate_arrays
from score.parallel.train import (REMAT_MODES, TrainStep, accumulate_gradients, apply_remat,
                                  set_remat, shard_step, split_micro_batches, with_accumulation)
