"""nbgrader settings for a student's server on the course's JupyterHub."""

import os

c = get_config()  # noqa: F821
c.CourseDirectory.course_id = os.environ.get("GPTCOURSE_COURSE_ID", "gptcourse")
c.Exchange.root = os.environ.get("GPTCOURSE_EXCHANGE", "/srv/nbgrader/exchange")
