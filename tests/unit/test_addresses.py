"""The plain-address fast path answers exactly as email-validator's whole check, or leaves the address to it.

Addresses are generated near the rules that matter: dot-atom local parts with every atext character, dots in
every position, the mailbox names email-validator lowercases, lengths around its limits, domains that are
valid, invalid, mixed case, punycode, special use, numeric or too long, and characters outside the plain
alphabet on either side. For every one, a fast answer must equal the full answer; and the common addresses
must get a fast answer (else the path would be right only by never answering).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deskmail.schemas import addresses
from deskmail.schemas.addresses import _plain, _validated

PROPERTIES = settings(max_examples=1500, deadline=None, database=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow])
ATEXT = "abcxyzABCXYZ0189_!#$%&'*+-/=?^`{|}~"
MAILBOXES = ("info", "Postmaster", "ABUSE", "www", "support", "noc")
LABELS = ("customer", "Desk", "xn--bcher-kva", "a", "x" * 63, "x" * 64, "-bad", "bad-", "1", "123", "b_c",
          "invalid", "local", "test", "example", "onion", "co", "com", "DE")


def locals_() -> st.SearchStrategy[str]:
    atoms = st.text(alphabet=ATEXT, min_size=1, max_size=12)
    dotted = st.lists(atoms, min_size=1, max_size=4).map(".".join)
    odd = st.sampled_from(["", ".a", "a.", "a..b", '"quoted"', "a b", "ä", "a\tb", "a@b", "a(b)", "x" * 64,
                           "x" * 65, "x" * 200])
    return st.one_of(dotted, dotted, st.sampled_from(MAILBOXES), odd, st.text(max_size=8))


def domains() -> st.SearchStrategy[str]:
    labels = st.one_of(st.sampled_from(LABELS), st.text(alphabet="abz09-", min_size=1, max_size=10))
    named = st.lists(labels, min_size=1, max_size=5).map(".".join)
    odd = st.sampled_from(["", "[127.0.0.1]", "localhost", "a.b.", ".a.b", "a..b", "bücher.example",
                           "ex ample.com", "example.com>", '"x".com', "x" * 250 + ".com",
                           ".".join(["a" * 60] * 4) + ".com"])
    return st.one_of(named, named, odd, st.text(max_size=10))


@PROPERTIES
@given(locals_(), domains())
@example("user1", "customer.example")
@example("info", "customer.example")
@example("a" * 64, ".".join(["b" * 60] * 3) + ".com")
@example("a" * 200, "customer.example")
@example("a" * 64, ".".join(["b" * 47] * 4) + ".com")  # 260 characters, each part within its own limit
@example("a" * 61, ".".join(["b" * 47] * 4) + ".com")  # 257
@example("a" * 55, ".".join(["b" * 47] * 4) + ".com")  # 251
def test_a_fast_answer_is_the_full_answer(local: str, domain: str) -> None:
    value = f"{local}@{domain}"
    fast = _plain(value)
    if fast is not None:
        assert fast == _validated(value), value


@PROPERTIES
@given(st.text(max_size=40))
def test_any_text_gets_the_full_answer_or_the_same_one(value: str) -> None:
    fast = _plain(value)
    assert fast is None or fast == _validated(value)


@pytest.mark.parametrize("value, expected", [
    ("user1@customer.example", "user1@customer.example"),
    ("Jane.Doe+ticket-42@Customer.Example", "Jane.Doe+ticket-42@customer.example"),
    ("x@xn--bcher-kva.example", "x@xn--bcher-kva.example"),
])
def test_common_addresses_take_the_fast_path(value: str, expected: str) -> None:
    assert _plain(value) == (expected, "")
    assert _validated(value) == (expected, "")


@pytest.mark.parametrize("value", ["Info@customer.example", "a..b@customer.example", "x@localhost",
                                   "x@bücher.example", '"a b"@customer.example', "x@[127.0.0.1]",
                                   "a" * 250 + "@b.com"])
def test_the_other_forms_are_left_to_the_full_check(value: str) -> None:
    assert _plain(value) is None


def test_an_invalid_domain_is_named_by_the_full_check() -> None:
    addresses._checked.cache_clear()
    assert addresses.address_problem("to[0]", "x@localhost") is not None
    assert "period" in addresses.address_problem("to[0]", "x@localhost").message  # type: ignore[union-attr]
