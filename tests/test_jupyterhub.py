"""A class on JupyterHub, end to end: the course's hub configuration on localhost.

An instructor and a student log in through the hub's login form; the instructor releases a
chapter with the formgrader, the student fetches and submits it from the assignment list,
the instructor collects and autogrades it. The test only swaps what a real server gets
from the operating system: a dummy authenticator instead of PAM, and servers that run as
the current user with separate home folders instead of separate accounts.
"""

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "jupyterhub"
PROXY_PACKAGE = "configurable-http-proxy"
CHAPTER = "00-welcome"
COURSE_ID = "gptcourse"
PASSWORD = "smoke-test-only"

pytestmark = pytest.mark.hub


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proxy_command() -> str:
    """configurable-http-proxy from the npm registry, installed next to the environment."""
    found = shutil.which(PROXY_PACKAGE)
    if found:
        return found
    prefix = Path(sys.prefix) / "hub-proxy"
    binary = prefix / "node_modules" / ".bin" / PROXY_PACKAGE
    if not binary.exists():
        if not shutil.which("npm"):
            pytest.skip("npm is needed to install configurable-http-proxy; install Node.js")
        prefix.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEPLOY / "package.json", prefix / "package.json")
        subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                        "--silent"], check=True, timeout=600)
    return str(binary)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    course = root / "course"
    shutil.copytree(REPO / "solutions" / CHAPTER, course / "solutions" / CHAPTER)
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    exchange = root / "exchange"
    exchange.mkdir(mode=0o1777)
    exchange.chmod(0o1777)

    port, api_port, hub_port = _free_port(), _free_port(), _free_port()
    config = root / "test_config.py"
    config.write_text(f"""
c = get_config()
load_subconfig({str(DEPLOY / "jupyterhub_config.py")!r})
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{_proxy_command()!r}]
c.JupyterHub.db_url = "sqlite:///{root}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allowed_users = {{"instructor", "student"}}
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{root}/home/{{username}}"
c.Spawner.args = {["--allow-root"] if os.geteuid() == 0 else []!r}
""")
    env = dict(os.environ, GPTCOURSE_COURSE_DIR=str(course), GPTCOURSE_EXCHANGE=str(exchange),
               GPTCOURSE_COURSE_ID=COURSE_ID, GPTCOURSE_INSTRUCTORS="instructor")
    log = open(root / "hub.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)],
                               cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                requests.get(f"{base}/hub/api", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterHub did not start:\n"
                                       f"{(root / 'hub.log').read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield base, course, exchange, root / "hub.log"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


class User:
    """A person in a browser: logs in through the hub's form, then uses their server."""

    def __init__(self, base: str, name: str):
        self.base, self.name = base, name
        self.session = requests.Session()

    def login(self) -> None:
        page = self.session.get(f"{self.base}/hub/login", timeout=30)
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        data = {"username": self.name, "password": PASSWORD}
        if xsrf:
            data["_xsrf"] = xsrf.group(1)
        response = self.session.post(f"{self.base}/hub/login?next=", data=data, timeout=30)
        response.raise_for_status()
        # Spawning may take a while: follow the hub until the server answers.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            page = self.session.get(f"{self.base}/user/{self.name}/lab", timeout=60)
            if page.ok and "/user/" in page.url and "_xsrf" in self.session.cookies:
                return
            time.sleep(1)
        raise AssertionError(f"{self.name}'s server did not start")

    def call(self, method: str, path: str, **kwargs):
        headers = {"X-XSRFToken": self.session.cookies.get("_xsrf", path=f"/user/{self.name}/")
                   or self.session.cookies.get("_xsrf")}
        response = self.session.request(method, f"{self.base}/user/{self.name}/{path}",
                                        headers=headers, timeout=300, **kwargs)
        return response


def test_class_on_jupyterhub_release_fetch_submit_collect_autograde(hub):
    base, course, exchange, log = hub
    instructor, student = User(base, "instructor"), User(base, "student")
    instructor.login()
    student.login()

    # Instructor: the formgrader is there, generates and releases the chapter.
    assignments = instructor.call("GET", "formgrader/api/assignments")
    assert assignments.ok, assignments.text
    for action in ("assign", "release"):
        result = instructor.call("POST", f"formgrader/api/assignment/{CHAPTER}/{action}")
        assert result.ok and result.json()["success"], result.text

    # Student: no formgrader, but the assignment list shows, fetches and submits.
    assert student.call("GET", "formgrader/api/assignments").status_code == 404
    listed = student.call("GET", f"assignments?course_id={COURSE_ID}").json()
    assert listed["success"], listed
    assert [a["assignment_id"] for a in listed["value"]] == [CHAPTER]
    form = {"course_id": COURSE_ID, "assignment_id": CHAPTER}
    fetched = student.call("POST", "assignments/fetch", data=form).json()
    assert fetched["success"], fetched
    submitted = student.call("POST", "assignments/submit", data=form).json()
    assert submitted["success"], submitted

    # Instructor: collect and autograde the untouched submission (it must score 0).
    # nbgrader names a submission after the account that made it; here every server runs
    # under the test's own account, on a real hub under the student's.
    student_id = pwd.getpwuid(os.getuid()).pw_name
    collected = instructor.call("POST", f"formgrader/api/assignment/{CHAPTER}/collect")
    assert collected.ok and collected.json()["success"], collected.text
    graded = instructor.call("POST", f"formgrader/api/submission/{CHAPTER}/{student_id}/autograde")
    assert graded.ok and graded.json()["success"], graded.text
    submission = instructor.call("GET", f"formgrader/api/submission/{CHAPTER}/{student_id}").json()
    assert submission["autograded"] and submission["max_score"] > 0
    assert submission["score"] == 0
