import sys

from . import distributed
from .cli import main

code = main()
if distributed.left_group:  # a torchrun worker: leave without gloo's static teardown (rnnext.distributed)
    distributed.exit_process(code)
sys.exit(code)
