#!/usr/bin/env python3
"""The seller console (GET /seller) in a real browser: Debian's Chromium driven by Playwright.

Run by tests/tests/console_browser.rs against an API it spawns (with a worker), or by hand:

    .venv/bin/python tests/browser/console_flow.py --base http://127.0.0.1:4000 \
        --seller-token "$SELLER" --storefront-token "$STOREFRONT"

The flow: sign in with the keyboard (a wrong token first: a plain-sentence error), create a pool,
create an AUTO_KEY offer on it (out of stock), upload a file of 5 lines with one duplicate and
one invalid line (report with line numbers), see the offer in stock, publish it; then orders
placed and paid through the API (storefront token) make the counts change without a reload,
first to the low-stock warning, then to out of stock on the pool and the offer; pasted keys
(one already stored) restock it; sign out.
Along the way: every input has a label, the token never appears in a URL, nothing is fetched
from elsewhere, the browser reports no error or warning (CSP included), and the page fits
390 px. Screenshots at 1280 and 390 px go to --artifacts.
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("Playwright is not installed in this Python: run ./scripts/test.sh (or ./scripts/browser-deps.sh)")

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN_KEY = "autokey-seller-token"
POOL_NAME = "Space Game keys"
OFFER_TITLE = "Space Game (Steam key)"
KEYS_FILE = "KEY1-AAAAA\nKEY2-BBBBB\nKEY1-AAAAA\nbad\nKEY3-CCCCC\n"

START = time.monotonic()


def step(text):
    print(f"[{time.monotonic() - START:5.1f}s] {text}", flush=True)


def call(base, token, method, path, body=None, expected=(200, 201)):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, payload = err.code, err.read()
    parsed = json.loads(payload) if payload else None
    if status not in expected:
        raise AssertionError(f"{method} {path} -> {status} {parsed}")
    return parsed


def buy(base, storefront, offer_id, quantity):
    """A storefront order for a new customer, paid (simulated) and delivered."""
    order = call(base, storefront, "POST", "/orders",
                 {"offerId": offer_id, "quantity": quantity, "buyerId": str(uuid.uuid4())})
    call(base, storefront, "POST", f"/orders/{order['id']}/pay")
    done = call(base, storefront, "POST", f"/orders/{order['id']}/fulfill?wait=10", expected=(200,))
    assert done["status"] == "FULFILLED" and len(done["keys"]) == quantity, done
    return done


def unlabeled_controls(page):
    return page.evaluate("""() => Array.from(document.querySelectorAll('input, select, textarea'))
        .filter((e) => e.type !== 'hidden' && e.labels.length === 0 && !e.getAttribute('aria-label'))
        .map((e) => e.id || e.name || e.outerHTML)""")


def unnamed_buttons(page):
    return page.evaluate("""() => Array.from(document.querySelectorAll('button'))
        .filter((b) => !(b.getAttribute('aria-label') || b.textContent).trim())
        .map((b) => b.outerHTML)""")


def overflow(page):
    return page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")


def screenshots(page, artifacts, name):
    """Full-page screenshots at 1280 and 390 px wide; the page must fit 390 px."""
    paths = []
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(150)
        extra = overflow(page)
        assert extra <= 0, f"at {width} px the page is {extra} px wider than the window"
        path = os.path.join(artifacts, f"{name}-{width}.png")
        page.screenshot(path=path, full_page=True)
        paths.append(path)
    page.set_viewport_size({"width": 1280, "height": 900})
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the API's base URL, e.g. http://127.0.0.1:4000")
    parser.add_argument("--seller-token", required=True)
    parser.add_argument("--storefront-token", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--artifacts", default="target/test-artifacts")
    args = parser.parse_args()
    base, seller, storefront = args.base.rstrip("/"), args.seller_token, args.storefront_token
    os.makedirs(args.artifacts, exist_ok=True)
    expect.set_options(timeout=15_000)

    problems, urls = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()

        def on_console(msg):
            # Errors and warnings, CSP violations among them, and Chromium's [DOM] advice
            # (e.g. "Password field is not contained in a form").
            if msg.type in ("error", "warning") or msg.text.startswith("[DOM]"):
                if "401 (Unauthorized)" in msg.text:
                    return  # the wrong token tried on purpose below
                problems.append(f"console {msg.type}: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
        page.on("request", lambda req: urls.append(req.url))

        step("open the console")
        page.goto(base + "/seller")
        expect(page.locator("#signin")).to_be_visible()
        assert page.locator("#token").evaluate("(e) => e.form && e.form.id") == "signin"
        assert not unlabeled_controls(page), f"inputs without a label: {unlabeled_controls(page)}"

        step("keyboard only: Tab to the token field, a wrong token, then the right one, Enter")
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        for _ in range(10):
            page.keyboard.press("Tab")
            if page.evaluate("() => document.activeElement.id") == "token":
                break
        else:
            raise AssertionError("the token field cannot be reached with Tab")
        page.keyboard.type("ak_not_a_real_token")
        page.keyboard.press("Enter")
        expect(page.locator("#error")).to_have_text(
            "This token is not valid or was revoked. Sign in again with a seller token.")
        assert page.evaluate("() => document.activeElement.id") == "token"
        page.keyboard.press("Control+A")
        page.keyboard.type(seller)
        page.keyboard.press("Enter")
        expect(page.locator("#app")).to_be_visible()
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator("#who")).to_contain_text("Signed in as seller")
        assert page.evaluate(f"() => sessionStorage.getItem('{TOKEN_KEY}')") == seller
        assert page.evaluate("() => localStorage.length") == 0
        assert page.locator("#token").input_value() == ""

        step("the session survives a reload (session storage)")
        page.reload()
        expect(page.locator("#app")).to_be_visible()

        step("create a pool (name and low-stock threshold 2, submitted with Enter)")
        page.locator("#pool-name").focus()
        page.keyboard.type(POOL_NAME)
        page.keyboard.press("Tab")
        page.keyboard.type("2")
        page.keyboard.press("Enter")
        pool_row = page.locator("#pools tr", has_text=POOL_NAME)
        expect(pool_row).to_have_count(1)
        expect(pool_row).to_have_class(re.compile(r"\bselected\b"))
        expect(pool_row.locator("td[data-label='Stock']")).to_have_text("Out of stock")
        pool_id = pool_row.get_attribute("data-id")
        expect(page.locator("#upload-h")).to_contain_text(POOL_NAME)
        expect(page.locator("#warning-list")).to_contain_text(f"Pool “{POOL_NAME}” is out of stock")

        step("create an AUTO_KEY offer on the pool: out of stock before any key")
        assert page.locator("#offer-pool").input_value() == pool_id
        assert page.locator("#offer-delivery").input_value() == "AUTO_KEY"
        expect(page.locator("#offer-preview")).to_contain_text("out of stock until keys are uploaded")
        page.locator("#offer-title").fill(OFFER_TITLE)
        page.locator("#offer-price").fill("19.99")
        page.get_by_role("button", name="Create offer").click()
        offer_row = page.locator("#offers tr", has_text=OFFER_TITLE)
        expect(offer_row).to_have_count(1)
        expect(offer_row.locator("td[data-label='Status']")).to_have_text("Draft")
        expect(offer_row.locator("td[data-label='Stock']")).to_have_attribute("data-availability", "out_of_stock")
        expect(offer_row.locator("td[data-label='Price']")).to_have_text("19.99 EUR")
        offer_id = offer_row.get_attribute("data-id")

        step("upload a file of 5 lines: one duplicate, one invalid")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "keys.txt")
            with open(path, "w") as f:
                f.write(KEYS_FILE)
            page.locator("#keys-file").set_input_files(path)
            expect(page.locator("#file-info")).to_have_text("keys.txt, 48 bytes.")
            page.get_by_role("button", name="Upload file").click()
            expect(page.locator("#report")).to_be_visible()
        expect(page.locator("#r-added")).to_have_text("3")
        expect(page.locator("#r-duplicates")).to_have_text("1")
        expect(page.locator("#r-invalid")).to_have_text("1")
        lines = page.locator("#report-lines tr")
        expect(lines).to_have_count(2)
        expect(page.locator("#report-lines tr[data-line='3']")).to_have_attribute("data-reason", "duplicate_in_upload")
        expect(page.locator("#report-lines tr[data-line='3']")).to_contain_text("Repeats an earlier line of this upload")
        expect(page.locator("#report-lines tr[data-line='4']")).to_have_attribute("data-reason", "too_short")
        expect(page.locator("#report-lines tr[data-line='4']")).to_contain_text("Invalid")
        expect(page.locator("#progress-text")).to_have_text("Done: 48 bytes uploaded from keys.txt.")
        assert page.locator("#upload-progress").evaluate("(p) => p.value === p.max")
        expect(pool_row.locator("td[data-label='Available']")).to_have_text("3")
        expect(pool_row.locator("td[data-label='Total']")).to_have_text("3")
        expect(pool_row.locator("td[data-label='Stock']")).to_have_text("In stock")
        expect(page.locator("#keys tr")).to_have_count(3)

        step("the offer is in stock now; publish it")
        expect(offer_row.locator("td[data-label='Stock']")).to_have_attribute("data-availability", "in_stock")
        expect(offer_row.locator("td[data-label='Sellable']")).to_have_text("3")
        offer_row.get_by_role("button", name=f"Publish {OFFER_TITLE}").click()
        expect(offer_row.locator("td[data-label='Status']")).to_have_attribute("data-status", "active")
        expect(offer_row.locator("td[data-label='Status']")).to_have_text("Published")
        expect(page.locator("#warnings")).to_be_hidden()
        assert not unlabeled_controls(page), f"inputs without a label: {unlabeled_controls(page)}"
        assert not unnamed_buttons(page), f"buttons without a name: {unnamed_buttons(page)}"
        shots = screenshots(page, args.artifacts, "console")

        step("an order through the API: the counts change without a reload (low stock at 2)")
        page.evaluate("() => { window.__sameDocument = true; }")
        buy(base, storefront, offer_id, 1)
        expect(pool_row.locator("td[data-label='Available']")).to_have_text("2")
        expect(pool_row.locator("td[data-label='Delivered']")).to_have_text("1")
        expect(pool_row.locator("td[data-label='Stock']")).to_have_text("Low stock")
        expect(offer_row.locator("td[data-label='Stock']")).to_have_text("Low stock")
        expect(page.locator("#warning-list")).to_contain_text(f"Pool “{POOL_NAME}” is low on stock: 2 keys left")

        step("deplete the pool: out-of-stock warnings on the pool and the offer")
        buy(base, storefront, offer_id, 2)
        expect(pool_row.locator("td[data-label='Available']")).to_have_text("0")
        expect(pool_row.locator("td[data-label='Delivered']")).to_have_text("3")
        expect(pool_row.locator("td[data-label='Stock']")).to_have_text("Out of stock")
        expect(offer_row.locator("td[data-label='Stock']")).to_have_attribute("data-availability", "out_of_stock")
        expect(offer_row.locator("td[data-label='Stock']")).to_have_text("Out of stock")
        expect(page.locator("#warning-list")).to_contain_text(f"Pool “{POOL_NAME}” is out of stock")
        expect(page.locator("#warning-list")).to_contain_text(
            f"Offer “{OFFER_TITLE}” is published but out of stock")
        expect(page.locator("#keys td[data-status='DELIVERED']")).to_have_count(3)
        assert page.evaluate("() => window.__sameDocument === true"), "the page was reloaded"
        shots += screenshots(page, args.artifacts, "console-out-of-stock")

        step("paste keys: one already stored, one new; the pool and the offer are back in stock")
        page.locator("#keys-text").fill("KEY1-AAAAA\r\nKEY4-DDDDD")
        page.get_by_role("button", name="Upload pasted keys").click()
        expect(page.locator("#r-added")).to_have_text("1")
        expect(page.locator("#report-lines tr[data-line='1']")).to_have_attribute("data-reason", "already_exists")
        expect(page.locator("#keys-text")).to_have_value("")
        expect(pool_row.locator("td[data-label='Available']")).to_have_text("1")
        expect(offer_row.locator("td[data-label='Stock']")).to_have_attribute("data-availability", "in_stock")
        expect(page.locator("#warning-list")).not_to_contain_text("out of stock")

        step("sign out: the token leaves session storage and stays out after a reload")
        page.get_by_role("button", name="Sign out").click()
        expect(page.locator("#signin")).to_be_visible()
        expect(page.locator("#app")).to_be_hidden()
        assert page.evaluate(f"() => sessionStorage.getItem('{TOKEN_KEY}')") is None
        expect(page.locator("#pools tr")).to_have_count(0)
        page.reload()
        expect(page.locator("#signin")).to_be_visible()
        expect(page.locator("#app")).to_be_hidden()

        browser.close()

    leaked = [u for u in urls if seller in u]
    assert not leaked, f"the token appeared in a URL: {leaked}"
    elsewhere = [u for u in urls if not (u.startswith(base + "/") or u.startswith("data:"))]
    assert not elsewhere, f"requests to elsewhere: {elsewhere}"
    assert not problems, "the browser reported:\n" + "\n".join(problems)
    step("screenshots: " + ", ".join(shots))
    step("passed")


if __name__ == "__main__":
    main()
