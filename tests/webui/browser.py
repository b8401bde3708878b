"""A headless Chromium, driven by Selenium, looking at the real WebUI as a user would (see test_browser.py).

Needs a Chromium and its chromedriver (Debian: ``apt-get install -y chromium chromium-driver``) and the ``selenium``
package (``pip install selenium``); :func:`unavailable` says what is missing. ``CHROMIUM`` / ``CHROMEDRIVER`` name
other binaries. The browser only ever reaches 127.0.0.1: every other host name fails to resolve (the Gradio page
asks a CDN for iframeResizer; that request fails at once instead of leaving the machine).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMEDRIVER_NAMES = ("chromedriver",)
# as the brief for this machine says; plus: nothing but 127.0.0.1 resolves
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
WINDOW = (1400, 1800)
# console errors that are the WebUI's / Gradio's, not ours: the CDN script Gradio 3.41 asks for (offline here)
FOREIGN_CONSOLE_ERRORS = ("iframeResizer.contentWindow.min.js",)


def _which(env: str, names: tuple[str, ...]) -> str | None:
    if os.environ.get(env):
        path = os.environ[env]
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return next((p for p in map(shutil.which, names) if p), None)


def chromium_binary() -> str | None:
    return _which("CHROMIUM", CHROMIUM_NAMES)


def chromedriver_binary() -> str | None:
    return _which("CHROMEDRIVER", CHROMEDRIVER_NAMES)


def unavailable() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install selenium)"
    if chromium_binary() is None:
        return ("no Chromium found (apt-get install -y chromium chromium-driver, or set CHROMIUM to its binary); "
                f"looked for {', '.join(CHROMIUM_NAMES)}")
    if chromedriver_binary() is None:
        return "no chromedriver found (apt-get install -y chromium-driver, or set CHROMEDRIVER to its binary)"
    return None


def launch(user_data_dir: Path | None = None, window: tuple[int, int] = WINDOW):
    """A headless Chromium with a fresh profile; its console messages are kept (``driver.get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    options.add_argument(f"--user-data-dir={user_data_dir or tempfile.mkdtemp(prefix='chromium-profile-')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver_binary()), options=options)
    driver.set_page_load_timeout(180)  # a loaded 2-CPU box has taken over 60 s
    return driver


class Timeout(AssertionError):
    pass


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll ``condition()`` until it returns something truthy (returned); :class:`Timeout` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = condition()
            if value:
                return value
        if time.monotonic() > deadline:
            raise Timeout(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


class WebUIPage:
    """The WebUI's page in a Selenium driver: tabs, accordions, Gradio inputs by elem_id, screenshots, console."""

    def __init__(self, driver, base_url: str):
        self.driver = driver
        self.base_url = base_url
        self.console: list[dict] = []  # every console message seen so far (get_log drains the browser's buffer)

    # -- page --------------------------------------------------------------------------------------------------
    def open(self, timeout: float = 120) -> "WebUIPage":
        assert self.base_url.startswith("http://127.0.0.1:"), self.base_url  # only ever the local WebUI
        self.driver.get(self.base_url)
        # Gradio has built the tabs and the WebUI's scripts (ours among them) have run
        wait_for(lambda: self.js("return !!document.querySelector('#tabs > .tab-nav > button')"
                                 " && typeof gradioApp === 'function' && typeof requestProgress === 'function'"
                                 " && typeof opts === 'object' && Object.keys(opts).length > 0"),
                 timeout, "the WebUI page to load")
        return self

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def by_id(self, elem_id: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, elem_id)

    def css(self, selector: str, within=None):
        from selenium.webdriver.common.by import By

        return (within or self.driver).find_elements(By.CSS_SELECTOR, selector)

    def open_tab(self, label: str, nav: str = "#tabs > .tab-nav", timeout: float = 10) -> None:
        """Click the tab button ``label`` in the tab bar ``nav`` (a CSS selector)."""
        button = wait_for(lambda: next(b for b in self.css(f"{nav} > button") if b.text.strip() == label),
                          timeout, f"a tab button {label!r} in {nav}")
        button.click()
        # Gradio re-renders the selected button: find it again
        wait_for(lambda: any(b.text.strip() == label and "selected" in (b.get_attribute("class") or "").split()
                             for b in self.css(f"{nav} > button")), timeout, f"tab {label!r} selected")

    def accordion(self, label: str, within_id: str):
        """The header (``.label-wrap``) of the accordion ``label`` inside the element ``within_id``."""
        return next(h for h in self.css(f"#{within_id} .gradio-accordion > .label-wrap")
                    if h.text.splitlines()[0].strip() == label)

    def open_accordion(self, label: str, within_id: str, timeout: float = 10) -> None:
        header = wait_for(lambda: self.accordion(label, within_id), timeout, f"the accordion {label!r}")
        if "open" not in (header.get_attribute("class") or "").split():
            self.js("arguments[0].scrollIntoView({block: 'center'})", header)
            header.click()
        wait_for(lambda: "open" in (header.get_attribute("class") or "").split(), timeout,
                 f"the accordion {label!r} open")

    def field(self, elem_id: str):
        """The input / textarea / select of the Gradio component ``elem_id``."""
        block = self.by_id(elem_id)
        return self.css("input, textarea, select", within=block)[0]

    def visible(self, elem_id: str) -> bool:
        try:
            block = self.by_id(elem_id)
        except Exception:
            return False
        return block.is_displayed() and block.size["height"] > 0

    def set_value(self, elem_id: str, value) -> None:
        """Type ``value`` into the component as a user would (select all, type), so Svelte sees the input events."""
        from selenium.webdriver.common.keys import Keys

        field = self.field(elem_id)
        self.js("arguments[0].scrollIntoView({block: 'center'})", field)
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.BACKSPACE)
        field.send_keys(str(value))
        wait_for(lambda: field.get_attribute("value") == str(value), 5, f"{elem_id} = {value!r}")

    def choose(self, elem_id: str, value: str, timeout: float = 10) -> None:
        """Pick ``value`` in the Gradio 3 dropdown ``elem_id`` as a user does: open its list, click the option."""
        field = self.field(elem_id)
        self.js("arguments[0].scrollIntoView({block: 'center'})", field)
        field.click()
        option = wait_for(lambda: next(li for li in self.css(f"#{elem_id} ul.options li")
                                       if li.get_attribute("data-value") == value), timeout, f"{value!r} in {elem_id}")
        option.click()
        wait_for(lambda: field.get_attribute("value") == value, timeout, f"{elem_id} = {value!r}")

    def click_checkbox(self, elem_id: str) -> None:
        box = self.css("input[type=checkbox]", within=self.by_id(elem_id))[0]
        self.js("arguments[0].scrollIntoView({block: 'center'})", box)
        box.click()

    def text(self, elem_id: str) -> str:
        return self.by_id(elem_id).text

    def click(self, elem_id: str) -> None:
        button = self.by_id(elem_id)
        self.js("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()

    # -- evidence ----------------------------------------------------------------------------------------------
    def screenshot(self, *paths: Path, max_height: int = 6000) -> bytes:
        """The whole page (the window grown to its height) as PNG bytes, written to each of ``paths``."""
        width = self.driver.get_window_size()["width"]
        for _ in range(3):  # growing the window can reflow the page: until it fits
            height, chrome = self.js("return [Math.max(document.body.scrollHeight, "
                                     "document.documentElement.scrollHeight), window.outerHeight - window.innerHeight]")
            wanted = min(max(int(height) + max(int(chrome), 0) + 20, WINDOW[1]), max_height)
            if self.driver.get_window_size()["height"] >= wanted:
                break
            self.driver.set_window_size(width, wanted)
            time.sleep(0.3)  # relayout
        self.js("window.scrollTo(0, 0)")
        time.sleep(0.1)
        png = self.driver.get_screenshot_as_png()
        for path in paths:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(png)
        return png

    def console_messages(self) -> list[dict]:
        with contextlib.suppress(Exception):
            self.console.extend(self.driver.get_log("browser"))
        return self.console

    def console_errors(self, ours_only: bool = False) -> list[str]:
        """SEVERE console messages; with ``ours_only`` without the WebUI's / Gradio's known ones."""
        errors = [m["message"] for m in self.console_messages() if m.get("level") == "SEVERE"]
        if ours_only:
            errors = [e for e in errors if not any(f in e for f in FOREIGN_CONSOLE_ERRORS)]
        return errors


def picture_stats(png: bytes) -> dict:
    """Size, distinct colours and spread of a PNG: a blank or broken screenshot has few colours and no spread."""
    import io

    from PIL import Image, ImageStat

    with Image.open(io.BytesIO(png)) as im:
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        return {"size": rgb.size, "colours": len(colours) if colours is not None else 1 << 20,
                "stddev": max(ImageStat.Stat(rgb).stddev)}
