"""JupyterHub for a gptcourse class on one server.

Instructors get the formgrader with the course folder (a clone of this repository) as
their notebook root; students get the assignment list and no formgrader. Everyone's
single-user server runs in the course's environment: the Python that runs this hub.

Settings come from environment variables so the same file serves a real class and the
course's own smoke test:

    GPTCOURSE_COURSE_ID     nbgrader course id                         (gptcourse)
    GPTCOURSE_INSTRUCTORS   comma-separated instructor user names     (instructor)
    GPTCOURSE_COURSE_DIR    the instructor's course folder            (/srv/gptcourse/course)
    GPTCOURSE_EXCHANGE      the nbgrader exchange folder              (/srv/nbgrader/exchange)

Start it as root with ``jupyterhub -f deploy/jupyterhub/jupyterhub_config.py``; users log
in with their system accounts (PAM) and each server runs under its own account, which is
what keeps students' files apart. Create the exchange once, writable by everyone but with
the sticky bit, so nobody can delete what others put there:

    install -d -m 1777 /srv/nbgrader/exchange
"""

import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

HERE = Path(__file__).resolve().parent
COURSE_ID = os.environ.get("GPTCOURSE_COURSE_ID", "gptcourse")
INSTRUCTORS = {n for n in os.environ.get("GPTCOURSE_INSTRUCTORS", "instructor").split(",") if n}
COURSE_DIR = os.environ.get("GPTCOURSE_COURSE_DIR", "/srv/gptcourse/course")
EXCHANGE = os.environ.get("GPTCOURSE_EXCHANGE", "/srv/nbgrader/exchange")

# Every single-user server runs in the course's environment, so kernels import gptcourse.
c.Spawner.cmd = [str(Path(sys.prefix) / "bin" / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Authenticator.admin_users = set(INSTRUCTORS)


def pre_spawn_hook(spawner):
    """Give each user the Jupyter configuration of their role."""
    role = "instructor" if spawner.user.name in INSTRUCTORS else "student"
    spawner.environment.update({
        # nbgrader runs some of its tools (alembic) as commands: put the environment first.
        "PATH": os.pathsep.join([str(Path(sys.prefix) / "bin"), os.environ.get("PATH", "")]),
        "JUPYTER_CONFIG_PATH": str(HERE / role),
        "GPTCOURSE_COURSE_ID": COURSE_ID,
        "GPTCOURSE_COURSE_DIR": COURSE_DIR,
        "GPTCOURSE_EXCHANGE": EXCHANGE,
    })
    if role == "instructor":
        spawner.notebook_dir = COURSE_DIR


c.Spawner.pre_spawn_hook = pre_spawn_hook
