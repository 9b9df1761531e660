"""`python -m cocu_core.train._runner SPEC.json`: the process torchrun starts on every rank."""

import sys

from cocu_core.compat import ensure_torchvision

if __name__ == "__main__":
    ensure_torchvision()
    from cocu_core.train.loop import worker_main

    worker_main(sys.argv[1])
