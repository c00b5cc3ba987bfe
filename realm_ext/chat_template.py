"""Chat templates: a conversation (a list of messages) rendered into the text a guest
tokenizes, from the model's `tokenizer.chat_template` (a Jinja2 template).

The template comes from the GGUF file, so it is untrusted: it runs in jinja2's
ImmutableSandboxedEnvironment, which refuses access to Python internals (attributes
starting with "_", functions' globals, mutation of the values passed in) and bounds
`range`; here an unsafe attribute fails the rendering at once (ChatTemplateError).
The environment and the variables are those of llama-cpp-python's Jinja2ChatFormatter
(and HF transformers' chat templates): trim_blocks and lstrip_blocks, the loopcontrols
extension, a pass-through `{% generation %}` tag,
`tojson` as json.dumps (ensure_ascii off), `raise_exception(message)`,
`strftime_now(format)`, `bos_token` / `eos_token` as the tokens' text, and
`add_generation_prompt` (True: the text ends where the assistant's reply begins).

A model without a template gets NoChatTemplateError: no format is assumed for a
model that does not name one, since a model answers well only in the format it was
trained on. CHATML is available by name ("chatml") for models known to use it.

Special tokens: the template writes them as text. When the model's tokenizer adds
BOS itself (tokenizer.ggml.add_bos_token) and the rendered text starts with the BOS
token's text, `ChatTemplate.prompt` drops that text, as llama.cpp's chat code does
(common/chat.cpp), so the prompt does not start with two BOS tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.parser
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from realm_ext.errors import RealmExtError
from realm_ext.model import Model

TEMPLATE_KEY = "tokenizer.chat_template"

# ChatML, as llama.cpp writes it for a model that asks for "chatml"
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BUILTIN = {"chatml": CHATML}

Message = Mapping[str, Any]


class ChatTemplateError(RealmExtError, ValueError):
    """A chat template failed to parse or to render (its message says why)."""


class NoChatTemplateError(ChatTemplateError):
    """The model carries no tokenizer.chat_template."""


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """HF's `{% generation %}...{% endgeneration %}` marks the assistant's part of a
    conversation for training; rendering passes its body through."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


class _Sandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, where an unsafe attribute is an error at once (the
    sandbox's own answer is an undefined value that fails only when used, so that
    `{{ x.__class__ }}` would render as nothing)."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")


def _environment() -> ImmutableSandboxedEnvironment:
    env = _Sandbox(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    return env


def _token_text(model: Model, token_id: int | None) -> str:
    tokens = model.tokenizer.tokens
    return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else ""


class ChatTemplate:
    """A compiled chat template and the special tokens' text it is rendered with."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", add_bos: bool = False):
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        self.add_bos = add_bos  # the tokenizer prepends BOS to the prompt itself
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the chat template does not parse: {e}") from None

    @classmethod
    def for_model(cls, model: Model, source: str | None = None) -> ChatTemplate:
        """The model's template (or `source`: a template's text, or a BUILTIN name),
        with its BOS and EOS tokens' text."""
        if source is None:
            source = model.metadata.get(TEMPLATE_KEY)
            if source is None:
                raise NoChatTemplateError(
                    f"{model.path.name} has no chat template ({TEMPLATE_KEY}); give one "
                    f"(a Jinja2 template, or one of {', '.join(BUILTIN)})"
                )
            if not isinstance(source, str):
                raise ChatTemplateError(f"{model.path.name}: {TEMPLATE_KEY} is not a string")
        source = BUILTIN.get(source, source)
        tok = model.tokenizer
        return cls(source, _token_text(model, tok.bos_id), _token_text(model, tok.eos_id), tok.add_bos)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True, **extra: Any) -> str:
        """The template's output for `messages` (each a mapping with "role" and
        "content"), exactly as rendered (special tokens as text)."""
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                raise_exception=_raise_exception,
                add_generation_prompt=add_generation_prompt,
                strftime_now=_strftime_now,
                **extra,
            )
        except ChatTemplateError:
            raise
        except SecurityError as e:
            raise ChatTemplateError(f"the chat template tried something the sandbox forbids: {e}") from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
            raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None
        except RecursionError:
            raise ChatTemplateError("the chat template failed: it recursed too deeply") from None

    def prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The text a guest tokenizes for `messages`: the rendering, without a leading
        BOS text when the tokenizer adds BOS itself (module docstring)."""
        text = self.render(messages, add_generation_prompt)
        if self.add_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        return text


def check_messages(messages: Sequence[Message]) -> None:
    """Each message a mapping with str "role" and "content"."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a sequence of {'role': ..., 'content': ...} mappings")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"message {i} is a {type(m).__name__}, not a mapping")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise TypeError(f"message {i}: {key!r} must be a str")
