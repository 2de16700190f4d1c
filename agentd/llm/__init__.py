"""Model providers behind one neutral message type (see types.py). SDKs load lazily.

A library: it takes its settings as arguments and knows nothing of a home, its config,
its ledger or its transcripts (agentd/chain.py builds providers from those). Each
adapter says what its failures mean (ProviderError.transient, .retry_after), and every
provider, wrapper or not, has `complete` and `aclose` (types.Provider).
"""
