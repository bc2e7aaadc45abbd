//! Decimal-exact money for vasticlaude (skeleton; the ledger helper fills it in).
