"""TFDS builders prepare and read back with TensorFlow made impossible to import."""

import json
import os
import subprocess
import sys
import textwrap

# Run in a fresh interpreter: every meta-path finder is wrapped so that `tensorflow` is not
# findable (`importlib.util.find_spec` says None, `import tensorflow` fails), even where TF is
# installed; at the end no `tensorflow` module may have been loaded.
_SCRIPT = textwrap.dedent(
    r"""
    import importlib.util, json, sys

    class HideTensorFlow:
        def __init__(self, inner):
            self.inner = inner
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tensorflow":
                return None
            find = getattr(self.inner, "find_spec", None)
            return find(name, path, target) if find else None
        def __getattr__(self, attr):
            return getattr(self.inner, attr)

    sys.meta_path[:] = [HideTensorFlow(f) for f in sys.meta_path]
    assert importlib.util.find_spec("tensorflow") is None
    try:
        import tensorflow  # noqa: F401
        raise SystemExit("tensorflow is importable")
    except ImportError:
        pass

    import grain
    from score import data
    from score.data import tfds_builders as tb

    out = {}
    data_dir = sys.argv[1]
    b = tb.build("math500", data_dir)
    source = b.as_data_source("test")
    gold = data.load_math500().by_id()
    read = [tb.to_problem(source[i]) for i in range(len(source))]
    out["math500_n"] = len(read)
    out["math500_equal"] = all(p == gold[p.id] for p in read) and len(set(p.id for p in read)) == 500

    b = tb.build("mbpp", data_dir)
    out["mbpp_sizes"] = {k: len(v) for k, v in b.as_data_source().items()}
    test = data.load_mbpp("test").by_id()
    ds = grain.MapDataset.source(b.as_data_source("test")).map(tb.to_problem)
    out["mbpp_equal"] = all(ds[i] == test[ds[i].id] for i in range(len(ds)))

    # A builder over records in memory (user data), read back by a second builder object
    # that has no records.
    mine = data.load_mbpp("prompt") + data.load_math500()[:5]
    tb.ProblemsBuilder({"train": mine}, dataset_name="mine", data_dir=data_dir).download_and_prepare()
    again = tb.ProblemsBuilder(dataset_name="mine", data_dir=data_dir).as_data_source("train")
    by_id = {p.id: p for p in mine}
    out["mine_equal"] = sorted(tb.to_problem(x).id for x in again) == sorted(by_id) and all(
        tb.to_problem(x) == by_id[tb.to_problem(x).id] for x in again)

    out["tensorflow_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
    print("RESULT " + json.dumps(out))
    """
)


def test_tfds_builders_without_tensorflow(tmp_path):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TFDS_DATA_DIR": str(tmp_path)}
  proc = subprocess.run(
      [sys.executable, "-c", _SCRIPT, str(tmp_path / "tfds")],
      capture_output=True, text=True, env=env, timeout=240,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  out = json.loads(line[len("RESULT "):])
  assert out["tensorflow_loaded"] == []
  assert out["math500_n"] == 500 and out["math500_equal"]
  assert out["mbpp_sizes"] == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
  assert out["mbpp_equal"]
  assert out["mine_equal"]
  assert list((tmp_path / "tfds" / "score_math500" / "1.0.0").glob("*.array_record*"))
