"""Mail protocol adapters: IMAP (session, IDLE), SMTP (check, submission), parsing, composing.

An adapter knows its protocol and nothing of the CRM: it takes plain values (an endpoint, a
username, a ``Secret``, a ``FetchPlan``) and returns small typed values and typed errors.
"""
