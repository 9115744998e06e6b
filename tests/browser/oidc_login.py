#!/usr/bin/env python3
"""The seller console's sign-in through the marketplace's identity provider, in Chromium.

Run by tests/tests/oidc.rs against an API configured with a real OpenID provider
(oidc-provider, tests/oidc/provider.js):

    .venv/bin/python tests/browser/oidc_login.py --base http://127.0.0.1:4000 --login seller-erin

The flow: open /seller, follow "Sign in with your marketplace account" to the provider's own
login page, sign in there, come back signed in (the session cookie is invisible to the page's
scripts), create a pool, reload (still signed in), sign out, reload (signed out: the session
was ended on the server). The browser must report no error (CSP included). A screenshot goes
to --artifacts.
"""

import argparse
import os
import sys
import time

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("Playwright is not installed in this Python: run ./scripts/test-deps.sh")

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START = time.monotonic()


def step(text):
    print(f"[{time.monotonic() - START:5.1f}s] {text}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--login", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--artifacts", default="target/test-artifacts")
    args = parser.parse_args()
    os.makedirs(args.artifacts, exist_ok=True)
    problems = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.set_default_timeout(15_000)

        def on_console(msg):
            # Only autokey's pages are judged: the provider's development pages are its own.
            if msg.type in ("error", "warning") and page.url.startswith(args.base):
                if "401 (Unauthorized)" in msg.text:
                    return  # the page asking whether a session is there, while signed out
                problems.append(f"console {msg.type}: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda err: problems.append(f"page error: {err}"))

        step("open the console: signed out, with the identity provider's sign-in offered")
        page.goto(args.base + "/seller")
        expect(page.locator("#signin")).to_be_visible()
        link = page.get_by_role("link", name="Sign in with your marketplace account")
        expect(link).to_be_visible()
        page.screenshot(path=os.path.join(args.artifacts, "oidc-signin-1280.png"))

        step("follow it to the provider's own login page")
        link.click()
        page.wait_for_url(lambda url: not url.startswith(args.base))
        page.locator("input[name=login]").fill(args.login)
        page.locator("input[name=password]").fill("any password")
        page.get_by_role("button", name="Sign-in").click()

        step("back on the console, signed in")
        page.wait_for_url(args.base + "/seller")
        expect(page.locator("#who")).to_be_visible()
        expect(page.locator("#app")).to_be_visible()
        cookies = {c["name"]: c for c in page.context.cookies(args.base)}
        session = cookies.get("autokey_session")
        assert session, f"no session cookie: {list(cookies)}"
        assert session["httpOnly"] and session["sameSite"] == "Strict", session
        assert "autokey_session" not in page.evaluate("document.cookie"), "the page's scripts see the cookie"
        assert "autokey_login" not in cookies, "the sign-in's cookie is removed"

        step("create a pool with the session")
        page.locator("#pool-name").fill("Signed-in pool")
        page.get_by_role("button", name="Create pool").click()
        expect(page.locator("#pools")).to_contain_text("Signed-in pool")
        page.screenshot(path=os.path.join(args.artifacts, "oidc-console-1280.png"), full_page=True)

        step("a reload keeps the session")
        page.reload()
        expect(page.locator("#pools")).to_contain_text("Signed-in pool")

        step("sign out ends it on the server too")
        page.locator("#signout").click()
        expect(page.locator("#signin")).to_be_visible()
        page.wait_for_timeout(300)
        page.reload()
        expect(page.locator("#signin")).to_be_visible()
        expect(page.locator("#app")).to_be_hidden()
        browser.close()

    if problems:
        sys.exit("browser problems:\n" + "\n".join(problems))
    step("ok")


if __name__ == "__main__":
    main()
