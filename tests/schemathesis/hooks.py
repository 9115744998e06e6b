"""Schemathesis hooks of autokey's run (tests/tests/schemathesis.rs sets SCHEMATHESIS_HOOKS).

They fill in, for schema-valid (positive) cases only, what a schema cannot say and a real
client always does:

- POST /orders and GET /orders: a storefront names its customer (`buyerId` is required for
  storefront tokens) and a buyer may only name itself (a schema cannot make a field depend
  on the token); orders are placed on the run's in-stock offer (AUTOKEY_OFFER_ID), since
  whether an offer can be ordered is state, not shape (the spec's example names an offer
  that does not exist).
- POST /offers/draft: a key pool named is one of the seller's (AUTOKEY_POOL_ID), and an
  AUTO_KEY draft names one, so that it can be published (400 otherwise, by the contract).
- POST /webhook-endpoints: the URL is one the api accepts (a schema cannot say "resolves to
  an address outbound requests may reach").
- POST /webhooks/payments: the payment provider signs its events. A positive case whose
  signature headers were generated gets a fresh timestamp and a real signature, made by the
  official `standardwebhooks` library over the exact bytes sent, so the webhook's logic is
  tested, not only its refusal of bad signatures. Cases that leave a header out, or are
  negative, are sent as generated (and must be refused).

Environment: AUTOKEY_ROLE (seller, buyer, storefront, admin), AUTOKEY_BUYER_ID (the buyer
token's subject), AUTOKEY_OFFER_ID, AUTOKEY_POOL_ID, AUTOKEY_WEBHOOK_SECRET (whsec_...).
"""

import json
import os
import uuid
from datetime import datetime, timezone

import schemathesis
from standardwebhooks import Webhook

ROLE = os.environ.get("AUTOKEY_ROLE", "")
BUYER_ID = os.environ.get("AUTOKEY_BUYER_ID", "")
OFFER_ID = os.environ.get("AUTOKEY_OFFER_ID", "")
POOL_ID = os.environ.get("AUTOKEY_POOL_ID", "")
WEBHOOK = Webhook(os.environ["AUTOKEY_WEBHOOK_SECRET"])


def is_positive(case) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode.is_positive


def operation(case) -> tuple[str, str]:
    return case.operation.method.upper(), case.operation.path


@schemathesis.hook
def before_call(context, case, kwargs):
    if not is_positive(case):
        return
    op = operation(case)
    if op == ("POST", "/orders") and isinstance(case.body, dict):
        case.body["offerId"] = OFFER_ID
        name_the_buyer(case.body)
    elif op == ("GET", "/orders"):
        case.query = case.query or {}
        name_the_buyer(case.query)
    elif op == ("POST", "/offers/draft") and isinstance(case.body, dict):
        if case.body.get("keyPoolId") is not None or case.body.get("deliveryType") == "AUTO_KEY":
            case.body["keyPoolId"] = POOL_ID
    elif op == ("POST", "/webhooks/payments"):
        sign(case)
    elif op == ("POST", "/webhook-endpoints") and isinstance(case.body, dict):
        # Any http(s) URL is schema-valid; only reachable ones are accepted (the test api
        # allows loopback receivers). Nothing listens on port 9.
        case.body["url"] = f"http://127.0.0.1:9/hooks/{uuid.uuid4()}"


def name_the_buyer(fields: dict) -> None:
    if ROLE == "storefront" and fields.get("buyerId") is None:
        fields["buyerId"] = str(uuid.uuid4())
    elif ROLE == "buyer" and fields.get("buyerId") is not None:
        fields["buyerId"] = BUYER_ID


def sign(case) -> None:
    headers = case.headers or {}
    names = ("webhook-id", "webhook-timestamp", "webhook-signature")
    if not all(isinstance(headers.get(name), str) for name in names):
        return
    try:
        # What requests sends for `json=`: json.dumps with its defaults, NaN refused.
        payload = json.dumps(case.body, allow_nan=False)
    except (TypeError, ValueError):
        return
    now = datetime.now(timezone.utc)
    headers["webhook-timestamp"] = str(int(now.timestamp()))
    headers["webhook-signature"] = WEBHOOK.sign(headers["webhook-id"], now, payload)
    case.headers = headers
