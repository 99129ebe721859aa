"""`keras-ckpt list` reads records without importing TensorFlow and prints nothing on stderr.

`import keras_ckpt` loads TensorFlow only when a name that needs it is first used (PEP 562).
One subprocess each: a fresh interpreter is the only honest place to look at `sys.modules`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.tiny import tiny_data, tiny_model

from keras_ckpt import RotatingCheckpoint

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell: TensorFlow would be noisy
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def test_keras_ckpt_list_imports_no_tensorflow_and_is_silent_on_stderr(tmp_path):
    x, y = tiny_data()
    cb = RotatingCheckpoint(tmp_path / "run", max_to_keep=2)
    tiny_model().fit(x, y, batch_size=8, epochs=3, callbacks=[cb], verbose=0)

    code = (
        "import json, sys\n"
        "from keras_ckpt.cli import main\n"
        f"code = main(['list', {str(tmp_path / 'run')!r}])\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    done = _python(code)
    assert done.stderr == ""
    *table, result = done.stdout.splitlines()
    assert json.loads(result) == {"code": 0, "heavy": []}
    assert "2 checkpoints" in table[0] and table[-1].split()[0] == "12"  # steps 8 and 12


def test_import_keras_ckpt_is_lazy_but_every_name_still_resolves():
    code = (
        "import sys, keras_ckpt\n"
        "print('tensorflow' in sys.modules)\n"
        "from keras_ckpt import CheckpointManager, restore, BestCheckpoint, KeepBest\n"
        "import keras_ckpt.callbacks\n"
        "print('tensorflow' in sys.modules, CheckpointManager.__name__, restore.__name__)\n"
        "print(all(hasattr(keras_ckpt, n) for n in keras_ckpt.__all__))\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == [
        "False",
        "True CheckpointManager restore",
        "True",
    ]
