r"""The one entry point: `python -m experiments.main --config configs/X.py:ARG --workdir DIR`.

Overrides: `--config.rl.alpha=0`. Re-running the same command on an existing workdir resumes.
All logic lives in the library (`score.trainers`), so notebooks and tests call the same code.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from score import parallel
from score import trainers
from score.utils import run as run_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, `path.py:arg`.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes everything; resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = _CONFIG.value
  trainers.check_inputs(config)
  parallel.initialize_distributed(config.get("distributed"))  # before any device is touched
  run_lib.write_run_info(_WORKDIR.value, config)
  resources = run_lib.ResourceLog(_WORKDIR.value)
  try:
    trainers.get(config.trainer)(config, _WORKDIR.value)
  finally:
    resources.write()


if __name__ == "__main__":
  app.run(main)
