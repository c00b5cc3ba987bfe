"""The base of every error realm-ext raises on purpose.

Catch `RealmExtError` for all of them. Each subclass also keeps the builtin base that
names its kind (RuntimeError, ValueError, ...), so code that catches those still works:

    RealmExtError
    ├── RealmError (RuntimeError)             a guest export returned an ABI error code
    ├── ModelNotGrantedError (KeyError, ValueError)
    │                                         a model not loaded by the host / not granted to the guest
    ├── GuestError (RuntimeError)             the guest trapped, or could not be instantiated
    │   └── GuestLimitError                   the guest ran past a limit (memory, time, fuel)
    ├── GGUFError (ValueError)                a GGUF file that cannot be used
    ├── ChatTemplateError (ValueError)        a chat template that does not parse or render
    │   └── NoChatTemplateError               the model has none and none was given
    └── PullError (RuntimeError)              a model download that failed
"""


class RealmExtError(Exception):
    """The base of realm-ext's own errors."""
