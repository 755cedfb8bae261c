"""The synthserve client: `synthserve run` and `synthserve jobs` (docs/api.md, "Files in
and out, CLI, web page, CORS").

    commands.py  the argparse commands and what they print
    run.py       a task or pipeline over a file: as a job on a server, or in process
    output.py    the output file, its journal, resuming into it
    http.py      the jobs API over HTTP
    progress.py  the progress bar (plain lines when stdout is not a terminal)
"""
