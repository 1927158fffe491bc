"""Run `hlmcli` commands as new processes forked from one warm interpreter, for the test run.

A command started with subprocess pays Python's start-up and the imports of numpy, scipy and pandas
(about 0.6 s of CPU) before it does anything; the test run makes many hundreds of such calls. Here a
server process, started once per test worker with the same interpreter and environment a subprocess
would get, imports hlmcli and those libraries, then forks one child per command. The child is a real
process: its own argv, working directory, environment, standard input, output and error files, and
exit status; it runs the installed entry point (`hlmcli.cli:main`, as the `hlmcli` script does). What a
fork cannot reproduce is left to a real subprocess by `tests/conftest.py`: start-up itself
(tests/test_startup.py), interpreter settings read only at start (PYTHON* variables), and commands that
must be watched for hanging.

Protocol, over the server's stdin/stdout pipes: one JSON request per line
({"args", "cwd", "env", "stdin", "stdout", "stderr"}: paths of the files to use), answered by one JSON
line {"status": exit status as subprocess reports it}.
"""

from __future__ import annotations

import json
import os
import sys


def _child(request: dict) -> None:
    """In the forked child: become the command, then exit with its status (never return)."""
    code = 70
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in ((0, request["stdin"], os.O_RDONLY),
                                (1, request["stdout"], os.O_WRONLY | os.O_TRUNC),
                                (2, request["stderr"], os.O_WRONLY | os.O_TRUNC)):
            new = os.open(path, flags)
            os.dup2(new, fd)
            os.close(new)
        sys.argv = ["hlmcli", *request["args"]]
        from hlmcli.cli import main

        try:
            main(args=request["args"], prog_name="hlmcli")
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # what the real script would print on an uncaught exception
            import traceback

            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def serve() -> None:
    import hlmcli.cli  # noqa: F401  the command and what every command imports
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import scipy.optimize  # noqa: F401
    import scipy.special  # noqa: F401

    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        pass
    requests = os.fdopen(int(sys.argv[1]), "r", encoding="utf-8")
    answers = os.fdopen(int(sys.argv[2]), "w", encoding="utf-8")
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            requests.close()
            answers.close()
            _child(request)
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"status": -os.WTERMSIG(status) if os.WIFSIGNALED(status)
                                  else os.WEXITSTATUS(status)}) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve()
