"""The browser host in headless Chromium (Debian `chromium` + `/usr/bin/chromedriver`, nothing downloaded):
the page served by `realm.web` on 127.0.0.1, files picked through the file input. Bad files (not a GGUF,
truncated, an unsupported architecture) give one clear error and leave the worker usable; the default
model is copied into OPFS, streams "Paris" into the page, and the guest's wasm memory stays <= 64 MiB."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

selenium = pytest.importorskip("selenium")
gguf = pytest.importorskip("gguf")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMEDRIVER = "/usr/bin/chromedriver"
BUDGET = 64 << 20

pytestmark = pytest.mark.skipif(not (Path(CHROMEDRIVER).exists() and shutil.which("chromium")),
                                reason="Debian chromium + chromium-driver are not installed (.ci/run installs them)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from realm.web import serve_in_thread

    server, url = serve_in_thread(0)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        driver.get(url)
        wait(driver, 30).until(lambda d: state(d) in ("idle", "ready"))
        yield driver
    finally:
        logs = []
        try:
            logs = driver.get_log("browser")
        except Exception:
            pass
        if logs:
            print("browser console:", *logs[-20:], sep="\n  ")
        driver.quit()
        server.shutdown()
        server.server_close()


def wait(driver, seconds: float) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.2)


def state(driver) -> str:
    return driver.find_element(By.ID, "status").get_attribute("data-state")


def pick(driver, path: Path) -> None:
    driver.find_element(By.ID, "file").send_keys(str(path))


def error_text(driver) -> str:
    return driver.find_element(By.ID, "error").text


def stored(driver) -> list[str]:
    return [li.get_attribute("data-key") for li in driver.find_elements(By.CSS_SELECTOR, "#models li[data-key]")]


def _unsupported_arch(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_name("not a transformer realm runs")
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_block_count(1)
    import numpy as np

    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _expect_rejected(driver, path: Path, pattern: str) -> str:
    """Pick `path`; the page shows one error matching the regex `pattern`, and nothing is stored."""
    before = stored(driver)
    pick(driver, path)
    wait(driver, 60).until(lambda d: error_text(d) and state(d) == "idle")
    text = error_text(driver)
    assert re.search(pattern, text, re.IGNORECASE), text
    assert len(text.splitlines()) == 1, text
    print(f"rejected {path.name}: {text}")
    assert stored(driver) == before, "a rejected file must not be stored"
    return text


def test_bad_files_are_one_clear_error_and_the_worker_stays_usable(browser, tmp_path, default_model):
    junk = tmp_path / "not-a-model.gguf"
    junk.write_bytes(b"this is not a GGUF file at all\n" * 100)
    _expect_rejected(browser, junk, r"not a GGUF file")
    truncated = tmp_path / "truncated.gguf"
    with open(default_model, "rb") as f:
        truncated.write_bytes(f.read(3 << 20))
    _expect_rejected(browser, truncated, r"file size|past the end|truncated|file has")
    _expect_rejected(browser, _unsupported_arch(tmp_path / "mamba.gguf"), r"architecture .?mamba.? is not supported")


def test_default_model_streams_paris_within_the_memory_budget(browser, default_model):
    t0 = time.perf_counter()
    pick(browser, default_model)
    wait(browser, 300).until(lambda d: state(d) == "ready" or error_text(d))
    assert not error_text(browser), error_text(browser)
    copy_seconds = time.perf_counter() - t0
    assert len(stored(browser)) == 1
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys("16")
    browser.find_element(By.ID, "run").click()
    # streamed: "Paris" is in the page before the generation has finished
    wait(browser, 300).until(lambda d: "Paris" in d.find_element(By.ID, "output").text or error_text(d))
    assert not error_text(browser), error_text(browser)
    wait(browser, 300).until(lambda d: state(d) == "done" or error_text(d))
    assert not error_text(browser), error_text(browser)
    out = browser.find_element(By.ID, "output").text
    assert "Paris" in out
    stats = browser.find_element(By.ID, "stats")
    peak = int(stats.get_attribute("data-peak-memory"))
    assert 0 < peak <= BUDGET, f"the guest's wasm memory reached {peak} bytes"
    print(f"browser: copy+load {copy_seconds:.1f} s; {stats.text}")
    # removable: the list empties
    browser.find_element(By.CSS_SELECTOR, "#models li[data-key] button.remove").click()
    wait(browser, 30).until(lambda d: not stored(d))

