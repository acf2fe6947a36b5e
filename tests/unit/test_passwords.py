"""The decoy hash that makes a sign-in for an unknown email cost what a real one costs."""

from __future__ import annotations

import argon2
import pytest

from sora2.api.auth.security import Passwords, decoy_hash

MEMORY_KIB = 8192  # small, so the real hashing below stays quick


async def test_the_decoy_carries_the_same_argon2_parameters_as_a_real_hash() -> None:
    # A real hash as the api stores it, so the decoy cannot drift from what sign-in checks.
    real = await Passwords(memory_kib=MEMORY_KIB).hash("correct horse")
    decoy = decoy_hash(memory_kib=MEMORY_KIB)

    # Same parameters: verifying against either does the same work.
    assert argon2.extract_parameters(decoy) == argon2.extract_parameters(real)
    assert decoy != decoy_hash(memory_kib=MEMORY_KIB)  # a fresh salt and digest each time


async def test_an_unknown_account_never_verifies_whatever_the_password() -> None:
    passwords = Passwords(memory_kib=MEMORY_KIB)
    real = await passwords.hash("correct horse")

    assert await passwords.verify("correct horse", real)
    assert not await passwords.verify("correct horse", None)
    assert not await passwords.verify("", None)


@pytest.mark.parametrize("password", ["correct horse", ""])
def test_the_decoy_is_a_well_formed_hash_that_matches_nothing(password: str) -> None:
    hasher = argon2.PasswordHasher(memory_cost=MEMORY_KIB, parallelism=1)
    with pytest.raises(argon2.exceptions.VerifyMismatchError):
        hasher.verify(decoy_hash(memory_kib=MEMORY_KIB), password)
