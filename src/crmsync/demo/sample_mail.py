"""Sample email for the demo mailboxes, addressed with the demo CRM's own people.

Each message has a fixed Message-ID, so delivering the set twice never doubles it. The set covers
what the incoming-email work must tell apart: customer mail, a lead's first contact, the same mail
to two colleagues, a newsletter, personal mail from a stranger, an attachment, a reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

DEMO_MESSAGE_DOMAIN = "demo.crmsync.test"


@dataclass(frozen=True)
class Person:
    name: str
    address: str


@dataclass(frozen=True)
class SampleMail:
    message_id: str
    recipients: list[str]
    message: EmailMessage


def _message(
    n: int,
    sender: Person,
    to: list[Person],
    subject: str,
    body: str,
    *,
    cc: list[Person] | None = None,
    when: datetime,
    headers: dict[str, str] | None = None,
) -> SampleMail:
    msg = EmailMessage()
    msg["From"] = formataddr((sender.name, sender.address))
    msg["To"] = ", ".join(formataddr((p.name, p.address)) for p in to)
    if cc:
        msg["Cc"] = ", ".join(formataddr((p.name, p.address)) for p in cc)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    message_id = f"<demo-{n}@{DEMO_MESSAGE_DOMAIN}>"
    msg["Message-ID"] = message_id
    for key, value in (headers or {}).items():
        msg[key] = value
    msg.set_content(body)
    recipients = [p.address for p in to + (cc or [])]
    return SampleMail(message_id=message_id, recipients=recipients, message=msg)


def build_samples(
    users: list[Person], contacts: list[Person], leads: list[Person], now: datetime | None = None
) -> list[SampleMail]:
    """Needs at least two users, two contacts and one lead."""
    if len(users) < 2 or len(contacts) < 2 or not leads:
        raise ValueError("the demo mail needs two users with mailboxes, two contacts and a lead")
    now = now or datetime.now(UTC)
    u1, u2 = users[0], users[1]
    c1, c2 = contacts[0], contacts[1]
    lead = leads[0]
    first = lambda p: p.name.split()[0]  # noqa: E731
    samples = [
        _message(
            1,
            c1,
            [u1],
            "Quote request: 40 vibration sensors for the Vantaa warehouse",
            f"Hello {first(u1)},\n\nwe would like a quote for 40 wireless vibration sensors "
            "with a three-year data plan, delivery in March.\n\nBest regards,\n"
            f"{c1.name}",
            when=now - timedelta(hours=5),
        ),
        _message(
            2,
            lead,
            [u1],
            "Interested in your condition monitoring",
            f"Hi,\n\nI saw your stand at the fair. Could you tell me more about the "
            f"pricing of the starter kit?\n\n{lead.name}",
            when=now - timedelta(hours=4),
        ),
        _message(
            3,
            c2,
            [u1],
            "Sensor gateway offline since Monday",
            f"Hi {first(u1)} and {first(u2)},\n\nthe gateway at our Oulu site has not sent "
            "data since Monday morning. The LED blinks red. Can someone look into it?\n\n"
            f"{c2.name}",
            cc=[u2],
            when=now - timedelta(hours=3),
        ),
        _message(
            4,
            Person("Teollisuusuutiset", "news@newsletter.test"),
            [u1, u2],
            "Weekly industry news: sensors, energy, logistics",
            "This week's headlines...\n\nUnsubscribe: https://newsletter.test/u",
            when=now - timedelta(hours=2),
            headers={
                "List-Id": "<weekly.newsletter.test>",
                "Precedence": "bulk",
                "List-Unsubscribe": "<https://newsletter.test/u>",
            },
        ),
        _message(
            5,
            Person("Matti Meikäläinen", "matti@private-mail.test"),
            [u2],
            "Lunch on Friday?",
            "Hei! Lunch at the usual place on Friday? -Matti",
            when=now - timedelta(hours=1),
        ),
    ]
    order = _message(
        6,
        c1,
        [u1],
        "Signed order confirmation",
        f"Hello {first(u1)},\n\nplease find the signed order attached.\n\n{c1.name}",
        when=now - timedelta(minutes=30),
    )
    order.message.add_attachment(
        b"%PDF-1.4\n% demo order confirmation\n",
        maintype="application",
        subtype="pdf",
        filename="order-confirmation.pdf",
    )
    samples.append(order)
    reply = _message(
        7,
        c2,
        [u2],
        "Re: Sensor gateway offline since Monday",
        f"Thanks, it works again after the restart.\n\n{c2.name}",
        when=now - timedelta(minutes=10),
        headers={
            "In-Reply-To": "<demo-3@demo.crmsync.test>",
            "References": "<demo-3@demo.crmsync.test>",
        },
    )
    samples.append(reply)
    return samples
