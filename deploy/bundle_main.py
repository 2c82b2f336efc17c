"""The main script of the frozen bundle (deploy/livekit-bridge.spec).

``./livekit-bridge [serve|dev|tree] [options]`` is ``python bridge_main.py``;
``./livekit-bridge __sdk_worker_process__ FD NAME LOG_LEVEL LOG_FORMAT [ship-logs]`` is an
SDK worker process, as the bridge starts it (actors/sdk_workers/command.py).
"""

import sys

from actors.sdk_workers.command import WORKER_ARGUMENT

if __name__ == "__main__":
    if sys.argv[1:2] == [WORKER_ARGUMENT]:
        if len(sys.argv) not in (6, 7):
            sys.exit(f"livekit-bridge: {WORKER_ARGUMENT} starts one of the bridge's SDK worker processes (the "
                     f"bridge passes it a socket); it is not a command to run by hand")
        from actors.sdk_workers.worker_process import main as run_worker

        run_worker(sys.argv[2:])
        sys.exit(0)
    from bridge_main import main

    sys.exit(main())
