#!/bin/sh
# The image's entrypoint: say which device and precision pathgen will use (a silent CPU fallback on a GPU server
# is the commonest surprise), then run the pathgen command given. `--entrypoint torchrun` bypasses this.
python -m pathgen.runtime.device
exec pathgen "$@"
