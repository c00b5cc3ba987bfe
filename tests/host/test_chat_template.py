"""realm_ext.chat_template against llama-cpp-python's Jinja2ChatFormatter (the
reference: the same templates and messages give the same text), on templates of
well-known models and on the ones GGUF files carry; and the sandbox: a template that
reaches for Python internals or mutates its input gets a clear ChatTemplateError."""

from __future__ import annotations

from pathlib import Path

import pytest

from realm_ext.chat_template import CHATML, ChatTemplate, ChatTemplateError, NoChatTemplateError
from realm_ext.model import load_gguf
from realm_ext.model_maker import make_model

llama_chat_format = pytest.importorskip("llama_cpp.llama_chat_format")

# templates as their models' tokenizer_config.json ship them
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# the rest of the environment: loop controls, tojson, strftime_now, {% generation %},
# whitespace control with trim_blocks / lstrip_blocks
FEATURES = """{%- set tools = [{"name": "clock", "args": {"tz": "UTC", "ümlaut": 1}}] %}
{{ bos_token }}Today is {{ strftime_now("%Y") }}.
Tools: {{ tools | tojson }} {{ tools | tojson(indent=2) }}
  {% for m in messages %}
    {% if m.role == "tool" %}{% continue %}{% endif %}
    {% if loop.index > 5 %}{% break %}{% endif %}
[{{ m.role | upper }}] {% if m.role == "assistant" %}{% generation %}{{ m.content }}{% endgeneration %}
{%- else %}{{ m.content }}{% endif %}

  {% endfor %}
{% if add_generation_prompt %}[ASSISTANT] {% endif %}"""

TEMPLATES = {"chatml": CHATML, "llama2": LLAMA2, "zephyr": ZEPHYR, "gemma": GEMMA, "smollm2": SMOLLM2,
             "features": FEATURES}  # fmt: skip

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": " 4 "},
        {"role": "user", "content": 'And 3+3? Say it in\nfull: ümlauts, 日本語, "quotes", {{ braces }}'},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "tool", "content": "ignored by some"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
        {"role": "user", "content": "e"},
        {"role": "assistant", "content": "f"},
        {"role": "user", "content": ""},
    ],
]


def reference(
    source: str, messages: list[dict], bos: str, eos: str, add_generation_prompt: bool = True
) -> str:
    f = llama_chat_format.Jinja2ChatFormatter(source, eos, bos, add_generation_prompt=add_generation_prompt)
    return f(messages=messages).prompt


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_renders_as_llama_cpp_python(name: str, add_generation_prompt: bool) -> None:
    source = TEMPLATES[name]
    bos, eos = "<s>", "</s>"
    ours = ChatTemplate(source, bos, eos)
    rendered = 0
    for messages in CONVERSATIONS:
        try:
            want = reference(source, messages, bos, eos, add_generation_prompt)
        except ValueError as e:  # raise_exception: ours refuses with the same message
            with pytest.raises(ChatTemplateError, match=str(e).split("...")[0].replace("/", ".")):
                ours.render(messages, add_generation_prompt)
            continue
        assert ours.render(messages, add_generation_prompt) == want
        rendered += 1
    assert rendered >= 1


def test_a_made_models_template_as_llama_cpp_python_reads_it(tmp_path: Path) -> None:
    """The template and the BOS / EOS text as llama-cpp-python takes them from the
    GGUF (the metadata through llama.cpp, the tokens' text through its vocabulary)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path = make_model(tmp_path / "m.gguf", "tiny", "F32", chat_template=LLAMA2)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    source = llm.metadata["tokenizer.chat_template"]
    bos = llm._model.token_get_text(llm.token_bos())
    eos = llm._model.token_get_text(llm.token_eos())
    with load_gguf(path) as model:
        ours = ChatTemplate.for_model(model)
        assert (ours.source, ours.bos_token, ours.eos_token) == (source, bos, eos) == (LLAMA2, "<s>", "</s>")
        for messages in CONVERSATIONS[:2]:
            want = reference(source, messages, bos, eos)
            assert ours.render(messages) == want
            # the tokenizer adds BOS itself: the prompt leaves the template's out
            assert want.startswith("<s>") and ours.prompt(messages) == want[len("<s>") :]


def test_smollm2s_own_template() -> None:
    from support.real_files import smollm2

    with load_gguf(smollm2()) as model:
        source = model.metadata["tokenizer.chat_template"]
        ours = ChatTemplate.for_model(model)
        tok = model.tokenizer
        for messages in CONVERSATIONS:
            want = reference(source, messages, tok.tokens[tok.bos_id], tok.tokens[tok.eos_id])
            assert ours.render(messages) == want
            assert ours.prompt(messages) == want  # no BOS text at its start


def test_no_template_is_a_clear_error(tmp_path: Path) -> None:
    with load_gguf(make_model(tmp_path / "m.gguf", "tiny", "F32")) as model:
        with pytest.raises(NoChatTemplateError, match="has no chat template"):
            ChatTemplate.for_model(model)
        # named or given explicitly, it is used
        assert ChatTemplate.for_model(model, "chatml").source == CHATML
        assert (
            ChatTemplate.for_model(model, "{{ messages[0].content }}").render([{"role": "u", "content": "x"}])
            == "x"
        )


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__ }}",
        "{{ raise_exception.__globals__ }}",
        "{{ strftime_now.__globals__['__builtins__'] }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{% set x = messages.append({'role': 'user', 'content': 'x'}) %}",
        "{% set _ = messages[0].update({'content': 'changed'}) %}",
        "{{ messages[0].pop('content') }}",
    ],
)
def test_the_sandbox_refuses_internals_and_mutation(source: str) -> None:
    t = ChatTemplate(source)
    with pytest.raises(ChatTemplateError, match="sandbox forbids|failed"):
        t.render([{"role": "user", "content": "hi"}])


def test_bad_templates_are_clear_errors() -> None:
    with pytest.raises(ChatTemplateError, match="does not parse"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="refused the conversation: no"):
        ChatTemplate("{{ raise_exception('no') }}").render([])
    with pytest.raises(ChatTemplateError, match="failed"):
        ChatTemplate("{{ messages[5]['content'] + 1 }}").render([])
    with pytest.raises(ChatTemplateError, match="recursed"):
        ChatTemplate("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").render([])
