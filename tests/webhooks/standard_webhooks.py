"""Payment webhooks signed by the official Standard Webhooks library (`standardwebhooks`,
PyPI), as a provider using it would send them (tests/tests/standard_webhooks.rs runs this):
the signed event is accepted and applied, a replay is acknowledged without effect, and a
tampered body, a signature made with another secret, or a stale timestamp is refused (401).

Usage: standard_webhooks.py BASE_URL WHSEC_SECRET ORDER_ID AMOUNT_CENTS CURRENCY
"""

import base64
import json
import sys
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

from standardwebhooks import Webhook


def post(base: str, msg_id: str, timestamp: datetime, signature: str, payload: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}/webhooks/payments",
        data=payload.encode(),
        method="POST",
        headers={
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature,
        },
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def expect(condition: bool, what: str) -> None:
    if not condition:
        print(f"standard webhooks: {what}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    base, secret, order_id, amount, currency = sys.argv[1:6]
    hook = Webhook(secret)
    event = {
        "type": "payment.succeeded",
        "data": {"orderId": order_id, "paymentId": f"pay_{uuid.uuid4().hex[:12]}",
                 "amountCents": int(amount), "currency": currency},
    }
    payload = json.dumps(event)
    now = datetime.now(timezone.utc)

    # Refused first, so that nothing they might do could hide behind the applied payment.
    tampered = payload.replace(f'"amountCents": {amount}', '"amountCents": 1')
    expect(tampered != payload, "the tampered body differs")
    msg_id = f"msg_{uuid.uuid4().hex}"
    status, body = post(base, msg_id, now, hook.sign(msg_id, now, payload), tampered)
    expect(status == 401, f"a tampered body: {status} {body}")

    other = Webhook(base64.b64encode(b"not-the-configured-secret-000000").decode())
    status, body = post(base, msg_id, now, other.sign(msg_id, now, payload), payload)
    expect(status == 401, f"another secret's signature: {status} {body}")

    stale = now - timedelta(minutes=10)
    status, body = post(base, msg_id, stale, hook.sign(msg_id, stale, payload), payload)
    expect(status == 401, f"a ten-minute-old timestamp: {status} {body}")

    signature = hook.sign(msg_id, now, payload)
    status, body = post(base, msg_id, now, signature, payload)
    expect(status == 200 and body.get("outcome") == "applied", f"the signed event: {status} {body}")
    status, body = post(base, msg_id, now, signature, payload)
    expect(status == 200 and body.get("outcome") == "duplicate", f"its replay: {status} {body}")
    print(f"standard webhooks: {msg_id} applied, replay acknowledged, 3 forgeries refused")


if __name__ == "__main__":
    main()
