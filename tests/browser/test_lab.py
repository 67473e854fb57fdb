"""The course in JupyterLab, driven through a real browser."""

import pytest

# A hung browser fails its test instead of stalling the whole run.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(1200)]

KERNEL_IDLE = """() => {
  const widget = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = widget && widget.sessionContext && widget.sessionContext.session
                 && widget.sessionContext.session.kernel;
  return kernel && kernel.status === 'idle';
}"""
ALL_CELLS_RAN = """() => {
  const prompts = [...document.querySelectorAll('.jp-InputArea-prompt')]
                  .map(e => e.textContent);
  return prompts.some(p => /\\[\\d+\\]/.test(p)) && !prompts.some(p => p.includes('*'));
}"""
# The chapter whose notebook draws plots and trains with a tqdm progress bar.
PLOTS_AND_PROGRESS = "01-tokens-and-embeddings/tokens_and_embeddings.ipynb"
UNDONE = "03-self-attention/self_attention.ipynb"


def _run_all(page, base, token, path, timeout_s=300):
    # A workspace of its own: JupyterLab would otherwise reopen the notebooks of the tests
    # before, and their cells would be on the page too.
    workspace = path.replace("/", "-").removesuffix(".ipynb")
    page.goto(f"{base}/lab/workspaces/{workspace}/tree/{path}?token={token}")
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    # Start the command without awaiting its promise: evaluate() has no timeout, and the
    # promise of a run that stops at an error need not settle. The wait below is bounded.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    page.wait_for_function(ALL_CELLS_RAN, timeout=timeout_s * 1000, polling=1000)


def test_solution_notebook_renders_plots_and_progress_bar(page, lab_server):
    base, token = lab_server
    _run_all(page, base, token, f"solutions/{PLOTS_AND_PROGRESS}")
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                          " .jp-RenderedText, .jp-RenderedText[data-mime-type="
                          "'application/vnd.jupyter.stderr']")
    tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t]
    assert not tracebacks, tracebacks[0]
    assert page.locator(".jp-RenderedImage img").count() >= 1, "no plot rendered as an image"
    assert page.locator(".widget-hprogress").count() >= 1, "no tqdm progress bar shown"


def test_undone_exercise_shows_a_readable_error(page, lab_server):
    base, token = lab_server
    _run_all(page, base, token, f"notebooks/{UNDONE}")
    errors = page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']")
    texts = errors.all_inner_texts()
    assert texts, "running an undone notebook showed no error"
    # For the screenshot artifact. A plain DOM scroll: Playwright's own action waits for the
    # element to count as visible, which JupyterLab's lazily drawn cells may never do.
    errors.first.evaluate("element => element.scrollIntoView()", timeout=10_000)
    first = texts[0]
    assert "not attempted" in first and "NotImplementedError" in first, first


def test_formgrader_lists_every_chapter(page, lab_server, course_copy):
    base, token = lab_server
    page.goto(f"{base}/formgrader?token={token}")
    chapters = sorted(p.name for p in (course_copy / "solutions").iterdir() if p.is_dir())
    for chapter in chapters:
        page.get_by_text(chapter, exact=True).first.wait_for(timeout=60_000)
