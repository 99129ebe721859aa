"""Jupyter kernels forked from the `fresh` zygote: a real ipykernel, without TensorFlow's start-up.

A notebook's first cell imports TensorFlow and Keras: ~4 s of CPU in every new kernel. The
session's `fresh` zygote (`helpers.fresh`) has imported them already and forks a process per
request; here that process runs `python -m ipykernel_launcher -f <connection file>`, exactly
the command of the `python3` kernelspec, so the notebook talks over ZeroMQ to an ordinary
ipykernel in its own process and process group. What differs from a kernel started by
`python`: `import tensorflow`, `import keras` and `import numpy` find the modules already
loaded (their module-level code ran in the zygote, with the same environment variables).
Nothing else is loaded before the kernel: no keras_ckpt, no matplotlib, no test code.

`kernel_manager(zygote, output)` gives an `AsyncKernelManager` for `NotebookClient(km=...)`:
the only change is its provisioner's `launch_kernel`; polling, signals, shutdown and cleanup
are jupyter_client's own (`LocalProvisioner`), on the `Popen`-like `helpers.fresh.Child` of
the forked process. nbclient shuts down only kernels it started itself: call
`execute(cleanup_kc=True)`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner

# `python -m ipykernel_launcher ARGS` as `-c` code: `helpers.fresh.run_script` runs `-c` code
# (or a script file) as __main__ with sys.argv and sys.path as a new interpreter sets them.
LAUNCHER = "import runpy; runpy.run_module('ipykernel_launcher', run_name='__main__')"


class ForkedProvisioner(LocalProvisioner):
    """`LocalProvisioner`, but the kernel command runs in a process forked from `zygote`."""

    zygote = None  # a `helpers.fresh.Zygote`, set by `kernel_manager`
    output = None  # the kernel process's stdout and stderr go to <output>.out / .err

    async def launch_kernel(self, cmd: list[str], **kwargs) -> dict:
        # The kernelspec's command, with jupyter_client's `python` resolved to sys.executable.
        assert cmd[1:3] == ["-m", "ipykernel_launcher"], cmd
        # As jupyter_client's launcher does: the kernel exits if its parent (the zygote) dies,
        # so no kernel outlives the session.
        env = dict(kwargs["env"], JPY_PARENT_PID=str(self.zygote.proc.pid))
        self.process = self.zygote.start(
            ["-c", LAUNCHER, *cmd[3:]],
            env=env,
            cwd=kwargs.get("cwd") or os.getcwd(),
            stdout=f"{self.output}.out",
            stderr=f"{self.output}.err",
        )
        # run_script makes the child the leader of its own process group
        self.pid = self.pgid = self.process.pid
        self.cwd = kwargs.get("cwd") or os.getcwd()
        return self.connection_info


def kernel_manager(zygote, output: str | os.PathLike[str]) -> AsyncKernelManager:
    """A manager for the `python3` kernel whose kernel is forked from `zygote`."""
    km = AsyncKernelManager(kernel_name="python3")
    provisioner = ForkedProvisioner(
        kernel_id=str(uuid.uuid4()), kernel_spec=km.kernel_spec, parent=km
    )
    provisioner.zygote, provisioner.output = zygote, str(Path(output))
    km.provisioner = provisioner
    return km
