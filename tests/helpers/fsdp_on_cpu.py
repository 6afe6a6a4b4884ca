"""Run a script under Accelerate's FSDP2 on CPU processes (gloo).

Accelerate 1.15 never selects FSDP for a CPU job: ``AcceleratorState`` turns an FSDP plugin into
``DistributedType.FSDP`` only for accelerator devices (``MULTI_GPU``, ``MULTI_XPU``, ...), so
``ACCELERATE_USE_CPU=true accelerate launch --config_file <fsdp2 yaml>`` silently trains with DDP. torch's
``fully_shard`` itself runs on CPU with gloo. This launcher makes the one change Accelerate refuses (a
``MULTI_CPU`` state with an FSDP plugin becomes ``FSDP``, as a ``MULTI_GPU`` one does) and then runs the script as ``__main__``, so that
everything after it is Accelerate's own FSDP2 code: ``fully_shard`` in ``prepare``, DTensor gradient
clipping, sharded ``save_state``/``load_state``, full ``get_state_dict``.

    ACCELERATE_USE_CPU=true accelerate launch --config_file scripts/configs/accelerate_fsdp2.yaml \\
        tests/helpers/fsdp_on_cpu.py scripts/train_mdeq_classifier.py ...
"""

from __future__ import annotations

import runpy
import sys

import accelerate.state
import torch
from accelerate.utils import DistributedType

_accelerator_state_init = accelerate.state.AcceleratorState.__init__


def _init(self, *args, fsdp_plugin=None, **kwargs) -> None:
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP  # what AcceleratorState does for MULTI_GPU
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


accelerate.state.AcceleratorState.__init__ = _init

if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
