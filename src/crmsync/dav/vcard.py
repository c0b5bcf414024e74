"""vCard (3.0, RFC 2426, and 4.0, RFC 6350) <-> act_fields contact fields, with icalendar.

    item = parse_vcard(text, item="/anna/contacts/x.vcf")   # MailboxItem (or ItemFormatError)
    text = render_vcard({"job_title": "CFO"}, crm_id="c-9", existing=text)

Which vCard property holds which field: ``full_name`` FN, ``first_name``/``last_name`` N,
``company`` the first ORG part, ``email`` the preferred (else first) EMAIL, ``job_title`` TITLE,
``telephone`` the TEL typed WORK (not CELL/FAX), ``mobile_phone`` the TEL typed CELL, ``city`` and
``country`` the work (else first) ADR, ``description`` NOTE. Rendering touches only the fields
given, in the property that holds them, keeping its parameters, and keeps every other property
(PHOTO, other numbers and addresses, X- properties...); the version of an existing card is kept.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import icalendar

from crmsync.core.act_fields import CRM_ID_PROPERTY, ItemKind, field_names
from crmsync.dav.items import ItemFormatError, MailboxItem, Value, clean_text

PRODID = "-//crmsync//crmsync//EN"
DEFAULT_VERSION = "3.0"
"""New cards are 3.0: every CardDAV client reads it (4.0 is kept where a client wrote it)."""
_SIMPLE = {"job_title": "TITLE", "description": "NOTE"}


def _types(prop: object) -> set[str]:
    params = getattr(prop, "params", {}) or {}
    raw = params.get("TYPE")
    values = raw if isinstance(raw, list) else [raw] if raw else []
    found = {t.strip().lower() for v in values for t in str(v).split(",") if t.strip()}
    if "PREF" in params:
        found.add("pref")
    return found


def _props(card: icalendar.Component, name: str) -> list:
    value = card.get(name)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _phone(prop: object) -> str | None:
    text = clean_text(prop)
    if text and text.lower().startswith("tel:"):
        text = text[4:]
    return text


def _pick_tel(tels: list, mobile: bool) -> int | None:
    for i, prop in enumerate(tels):
        types = _types(prop)
        if mobile and "cell" in types:
            return i
        if not mobile and "work" in types and not types & {"cell", "fax"}:
            return i
    return None


def _pick_email(emails: list) -> int | None:
    if not emails:
        return None
    for i, prop in enumerate(emails):
        if "pref" in _types(prop):
            return i
    return 0


def _pick_adr(adrs: list) -> int | None:
    for i, prop in enumerate(adrs):
        if "work" in _types(prop):
            return i
    return 0 if adrs else None


def _load(text: str | bytes, item: str | None) -> icalendar.Component:
    try:
        card = icalendar.Component.from_ical(text)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise ItemFormatError(f"not a valid vCard ({str(exc)[:200]})", item=item) from None
    if card.name != "VCARD":
        raise ItemFormatError(f"is a {card.name}, not a VCARD", item=item)
    if card.errors:
        name, why = card.errors[0]
        raise ItemFormatError(f"the vCard has a bad {name} ({why})", item=item)
    return card


def parse_vcard(text: str | bytes, *, item: str | None = None) -> MailboxItem:
    """The contact in TEXT as a MailboxItem; ItemFormatError names ITEM when it is unreadable."""
    card = _load(text, item)
    uid = clean_text(card.get("UID"))
    if uid is None:
        raise ItemFormatError("the vCard has no UID", item=item)
    fields: dict[str, Value] = dict.fromkeys(field_names(ItemKind.CONTACT))
    try:
        fields["full_name"] = clean_text(card.get("FN"))
        if (n := card.get("N")) is not None and hasattr(n, "fields"):
            fields["last_name"] = n.fields.family.strip() or None
            fields["first_name"] = n.fields.given.strip() or None
        if (org := card.get("ORG")) is not None and hasattr(org, "name"):
            fields["company"] = org.name.strip() or None
        for name, prop in _SIMPLE.items():
            fields[name] = clean_text(card.get(prop))
        emails = _props(card, "EMAIL")
        if (i := _pick_email(emails)) is not None:
            fields["email"] = clean_text(emails[i])
        tels = _props(card, "TEL")
        for name, mobile in (("telephone", False), ("mobile_phone", True)):
            if (i := _pick_tel(tels, mobile)) is not None:
                fields[name] = _phone(tels[i])
        adrs = _props(card, "ADR")
        if (i := _pick_adr(adrs)) is not None and hasattr(adrs[i], "fields"):
            fields["city"] = adrs[i].fields.locality.strip() or None
            fields["country"] = adrs[i].fields.country.strip() or None
    except (ValueError, TypeError, AttributeError) as exc:
        raise ItemFormatError(f"unreadable value ({exc})", item=item or uid) from None
    categories: list[str] = []
    for prop in _props(card, "CATEGORIES"):
        for cat in getattr(prop, "cats", []):
            if (text_ := str(cat).strip()) and text_ not in categories:
                categories.append(text_)
    crm_id = clean_text(card.get(CRM_ID_PROPERTY))
    return MailboxItem(ItemKind.CONTACT, uid, fields, crm_id, tuple(categories))


def _replace(card: icalendar.Component, name: str, props: list) -> None:
    card.pop(name, None)
    for prop in props:
        card.add(name, prop)


def _text(value: str, like: object | None = None) -> icalendar.vText:
    new = icalendar.vText(value)
    if like is not None and getattr(like, "params", None):
        new.params = like.params
    return new


def _set_one(card: icalendar.Component, name: str, value: Value) -> None:
    card.pop(name, None)
    if value:
        card.add(name, _text(str(value)))


def _set_in_list(
    card: icalendar.Component, name: str, index: int | None, value: Value, new_params: dict
) -> None:
    """Set (or remove, when VALUE is None) the NAME property at INDEX, adding one if missing."""
    props = _props(card, name)
    if index is None:
        if not value:
            return
        prop = _text(str(value))
        prop.params = icalendar.Parameters(new_params)
        props.append(prop)
    elif value:
        props[index] = _text(str(value), props[index])
    else:
        del props[index]
    _replace(card, name, props)


def render_vcard(
    fields: Mapping[str, Value],
    *,
    uid: str | None = None,
    crm_id: str | None = None,
    categories: tuple[str, ...] | None = None,
    existing: str | bytes | None = None,
    version: str = DEFAULT_VERSION,
) -> str:
    """TEXT of the card: EXISTING updated with FIELDS (only those given), or a new card."""
    unknown = set(fields) - set(field_names(ItemKind.CONTACT))
    if unknown:
        raise ValueError(f"contact has no fields {sorted(unknown)}")
    if existing is not None:
        card = _load(existing, uid)
        version = clean_text(card.get("VERSION")) or version
        uid = uid or clean_text(card.get("UID"))
    else:
        card = icalendar.Component()
        card.name = "VCARD"
        card.add("VERSION", version)
        card.add("PRODID", PRODID)
    v4 = version.startswith("4")
    uid = uid or (f"urn:uuid:{uuid.uuid4()}" if v4 else str(uuid.uuid4()))
    _set_one(card, "UID", uid)
    if crm_id is not None:
        _set_one(card, CRM_ID_PROPERTY, crm_id)
    if categories is not None:
        card.pop("CATEGORIES", None)
        if categories:
            card.add("CATEGORIES", list(categories))
    try:
        _write(card, dict(fields), v4)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ItemFormatError(f"cannot write it ({exc})", item=uid) from None
    return card.to_ical(sorted=False).decode("utf-8")


def _write(card: icalendar.Component, fields: dict[str, Value], v4: bool) -> None:
    def kind_params(*types: str) -> dict:
        return {"TYPE": ",".join(t.lower() if v4 else t.upper() for t in types)}

    for name, prop in _SIMPLE.items():
        if name in fields:
            _set_one(card, prop, fields[name])
    if "first_name" in fields or "last_name" in fields:
        old = card.get("N")
        parts = list(old.fields) if old is not None and hasattr(old, "fields") else [""] * 5
        if "last_name" in fields:
            parts[0] = str(fields["last_name"] or "")
        if "first_name" in fields:
            parts[1] = str(fields["first_name"] or "")
        card.pop("N", None)
        card.add("N", tuple(parts))
    if "company" in fields:
        old = card.get("ORG")
        units = tuple(old.units) if old is not None and hasattr(old, "units") else ()
        card.pop("ORG", None)
        if fields["company"]:
            card.add("ORG", (str(fields["company"]), *units))
    if "email" in fields:
        emails = _props(card, "EMAIL")
        _set_in_list(card, "EMAIL", _pick_email(emails), fields["email"], kind_params("work"))
    for name, mobile in (("telephone", False), ("mobile_phone", True)):
        if name in fields:
            tels = _props(card, "TEL")
            params = kind_params("cell") if mobile else kind_params("work", "voice")
            _set_in_list(card, "TEL", _pick_tel(tels, mobile), fields[name], params)
    if "city" in fields or "country" in fields:
        adrs = _props(card, "ADR")
        i = _pick_adr(adrs)
        parts = list(adrs[i].fields) if i is not None else [""] * 7
        if "city" in fields:
            parts[3] = str(fields["city"] or "")
        if "country" in fields:
            parts[6] = str(fields["country"] or "")
        new = icalendar.vAdr(tuple(parts))
        new.params = adrs[i].params if i is not None else icalendar.Parameters(kind_params("work"))
        if i is None:
            adrs.append(new)
        elif any(parts):
            adrs[i] = new
        else:
            del adrs[i]
        _replace(card, "ADR", adrs)
    if "full_name" in fields or "FN" not in card:
        full = fields.get("full_name") or clean_text(card.get("FN"))
        if not full:
            n = card.get("N")
            names = (
                (n.fields.given, n.fields.family) if n is not None and hasattr(n, "fields") else ()
            )
            full = " ".join(p for p in names if p) or str(fields.get("email") or "") or "?"
        _set_one(card, "FN", full)  # FN is required in both versions
