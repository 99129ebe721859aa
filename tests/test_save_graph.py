"""`save_graph=True`: a subclassed model loaded, evaluated and exported without its class."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap

import keras
import numpy as np
import pytest

from keras_ckpt import CheckpointManager, KeepLast, RotatingCheckpoint, list_checkpoints


class Net(keras.Model):
    """Subclassed: model.json names this class, which no other process can import."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.body = keras.layers.Dense(16, activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.head = keras.layers.Dense(3)

    def call(self, x, training=False):
        return self.head(self.norm(self.body(x), training=training))


def _data(n: int = 96):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x[:, :3].argmax(1) + (x[:, 3] > 1.0)).clip(0, 2).astype("int64")
    return x, y


def _net() -> Net:
    keras.utils.set_random_seed(0)
    model = Net()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class _AtEachSave(keras.callbacks.Callback):
    """After the checkpoint callback: what the training process predicts at each epoch end."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.seen = x, y, {}

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        logs = self.model.evaluate(self.x, self.y, batch_size=32, verbose=0, return_dict=True)
        self.seen[step] = (self.model.predict(self.x, verbose=0), logs)


def _fit(directory, save_graph: bool, epochs: int = 5, record: bool = False):
    """Trains a new `Net` into `directory`; `record`: also what it predicts at each save
    (an evaluate and a predict per epoch, only for the tests that compare with it)."""
    x, y = _data()
    model = _net()
    seen = _AtEachSave(x, y)
    cb = RotatingCheckpoint(str(directory), max_to_keep=3, save_graph=save_graph)
    callbacks = [cb, seen] if record else [cb]
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, callbacks=callbacks, verbose=0)
    return seen.seen, x, y


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("save_graph")
    seen, x, y = _fit(root / "run", save_graph=True, record=True)
    return root, seen, x, y


def _tree(directory) -> dict[str, tuple[int, int, str]]:
    out = {}
    for dirpath, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, directory)] = (
                os.path.getsize(path),
                os.stat(path).st_mtime_ns,
                digest,
            )
    return out


_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from keras_ckpt import cli, evaluate_checkpoints, list_checkpoints, load_model
    from keras_ckpt import load_saved_model

    run, data, out = sys.argv[1:4]
    arrays = np.load(data)
    x, y = arrays["x"], arrays["y"]
    result = {"predictions": {}, "trainable": []}
    for info in list_checkpoints(run):
        model = load_model(info.path)
        result["predictions"][info.step] = model.predict(x, verbose=0).tolist()
        result["trainable"].append(len(model.trainable_weights))
    result["rows"] = evaluate_checkpoints(run, (x, y), batch_size=32)
    result["export_code"] = cli.main(["export", run, out + "/exported"])
    result["exported"] = load_saved_model(out + "/exported").predict(x, verbose=0).tolist()
    result["inspect_code"] = cli.main(["inspect", run])
    result["class_defined"] = any(n.endswith("test_save_graph") for n in sys.modules)
    with open(out + "/result.json", "w") as f:
        json.dump(result, f)
    """
)


@pytest.mark.slow
def test_subclassed_checkpoints_load_evaluate_and_export_without_the_class(
    trained, tmp_path, fresh
):
    root, seen, x, y = trained
    run = root / "run"
    kept = list_checkpoints(run)
    assert [i.step for i in kept] == [18, 24, 30]
    np.savez(tmp_path / "data.npz", x=x, y=y)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    done = fresh.run(  # a new process (`helpers.fresh`) that never saw the model's class
        [str(script), str(run), str(tmp_path / "data.npz"), str(tmp_path)],
        timeout=300,
        cwd=str(tmp_path),  # not the tests directory: the test module cannot be imported
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["class_defined"] is False

    for info in kept:  # load_model of every kept checkpoint predicts what training predicted
        got = np.asarray(result["predictions"][str(info.step)])
        np.testing.assert_allclose(got, seen[info.step][0], rtol=0, atol=1e-5)
    assert result["trainable"] == [0, 0, 0]  # an inference model

    rows = result["rows"]  # evaluate_checkpoints: the loss and accuracy model.evaluate reported
    assert [r["step"] for r in rows] == [18, 24, 30]
    for row in rows:
        expected = seen[row["step"]][1]
        assert abs(row["loss"] - expected["loss"]) <= 1e-4
        assert abs(row["accuracy"] - expected["accuracy"]) <= 1e-6

    assert result["export_code"] == 0 and result["inspect_code"] == 0
    np.testing.assert_allclose(
        np.asarray(result["exported"]), seen[kept[-1].step][0], rtol=0, atol=1e-5
    )
    assert "Net" in json.loads((run / "model.json").read_text())["class_name"]


def test_graph_is_written_once_and_never_rewritten(trained, tmp_path):
    root, _, _, _ = trained
    run = tmp_path / "run"
    _fit(run, save_graph=True, epochs=1)
    graph = run / "graph"
    assert (graph / "saved_model.pb").is_file() and (graph / "keras_ckpt.json").is_file()
    record = json.loads((graph / "keras_ckpt.json").read_text())
    names = [v["path"].rsplit("/", 1)[-1] for v in record["variables"]]  # model.variables order
    assert names == ["kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"] + [
        "kernel",
        "bias",
    ]
    assert record["variables"][0]["object"] == ["body", "_kernel"]  # how checkpoints name it
    assert record["compile"]["metrics"] == ["accuracy"]
    before = _tree(graph)
    _fit(run, save_graph=True, epochs=2)  # a second fit into the same directory
    assert _tree(graph) == before
    assert not [n for n in os.listdir(run) if n.startswith(".tmp-graph-")]


def test_save_graph_false_is_the_default_and_writes_no_graph(tmp_path):
    _fit(tmp_path / "run", save_graph=False, epochs=1)
    assert list_checkpoints(tmp_path / "run") and not (tmp_path / "run" / "graph").exists()


def test_custom_loop_manager_writes_the_graph_at_its_first_save(tmp_path):
    x, y = _data(16)
    model = _net()
    model(x)  # built
    loop = str(tmp_path / "loop")
    with CheckpointManager(loop, model, keep=[KeepLast(2)], save_graph=True) as m:
        m.save(step=1)
        assert (tmp_path / "loop" / "graph" / "saved_model.pb").is_file()
        m.save(step=2)
    assert [i.step for i in list_checkpoints(tmp_path / "loop")] == [1, 2]


def test_leftover_of_an_interrupted_graph_write_is_removed_by_the_next_run(tmp_path):
    run = tmp_path / "run"
    leftover = run / ".tmp-graph-0123456789ab"
    (leftover / "variables").mkdir(parents=True)
    (leftover / "saved_model.pb").write_bytes(b"half")
    mine = run / ".tmp-graph-notes"  # not a name keras_ckpt gives: left alone
    mine.mkdir()
    x, _ = _data(16)
    model = _net()
    model(x)
    with CheckpointManager(str(run), model, save_graph=True) as manager:
        manager.save(step=1)
    assert not leftover.exists() and mine.exists()
    assert (run / "graph" / "saved_model.pb").stat().st_size > 4
