"""Mail protocol adapters (IMAP now; SMTP, message parsing and IDLE later).

An adapter knows its protocol and nothing of the CRM: it takes plain values (an endpoint, a
username, a ``Secret``, a ``FetchPlan``) and returns small typed values and typed errors.
"""
