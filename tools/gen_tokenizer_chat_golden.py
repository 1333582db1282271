#!/usr/bin/env python3
"""Renders chat-template goldens for the C chat renderer (src/tokenizer/chat_template.c)
with Jinja2 the way transformers' apply_chat_template does (sandboxed
environment, trim_blocks, lstrip_blocks, loopcontrols, raise_exception,
tojson), for several conversations and every supported template family.

Templates: the three shipped in ../shared (mg-llama-27m, the "llama3.1" folder's
Llama 3 template, Qwen3), and transcriptions of the published Qwen2,
Qwen2.5-Instruct and Llama-3.1-Instruct templates (only their no-tools paths
matter here).

Usage: python3 tools/gen_tokenizer_chat_golden.py [--shared ../shared] [--out tests/data/tokenizers/chat-golden.json]
"""
import argparse
import json

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

QWEN2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
         "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {{- raise_exception("tool calls are not part of these goldens") }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


def M(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = [
    ("example", [M("system", "You are a helpful assistant."), M("user", "Hello!"), M("assistant", "Hi there."),
                 M("user", "What is 2+2?")], True),
    ("user_only_gen", [M("user", "Hello!")], True),
    ("user_only_nogen", [M("user", "Hello!")], False),
    ("assistant_last", [M("user", "Hi"), M("assistant", "Hello, how can I help?")], False),
    ("whitespace", [M("system", "  Be brief. \n"), M("user", "\n\tpadded question \u3000"),
                    M("assistant", " answer\n\n")], True),
    ("unicode", [M("user", "caf\u00e9 \u4f60\u597d \U0001F600"), M("assistant", "\u00a1Hola!")], True),
    ("two_systems", [M("system", "First."), M("user", "Q1"), M("system", "Second."), M("user", "Q2")], True),
    ("think_last", [M("user", "2+2?"), M("assistant", "<think>\nadd them\n</think>\n\n4")], False),
    ("think_history", [M("user", "2+2?"), M("assistant", "<think>\nadd them\n</think>\n\n4"), M("user", "and 3+3?")],
     True),
    ("think_after_query", [M("user", "Q"), M("assistant", "<think>\n\nr1\n\n</think>\n\nA1"),
                           M("assistant", "plain"), M("assistant", "\n\nlast")], False),
    ("tool_turns", [M("user", "Weather?"), M("assistant", "Checking."), M("tool", "{\"t\": 20}"),
                    M("tool", "{\"t\": 21}"), M("user", "<tool_response>x</tool_response>")], True),
]

# roles each family's renderer accepts (mg raises on tool)
FAMILIES = {
    "mg-llama-27m": {"skip": {"tool_turns"}},
    "llama3": {"skip": set()},
    "llama3.1": {"skip": set()},
    "qwen2": {"skip": set()},
    "qwen2.5": {"skip": set()},
    "qwen3": {"skip": set()},
}


def raise_exception(msg):
    raise RuntimeError(msg)


def tojson(x, indent=None):
    return json.dumps(x, ensure_ascii=False, indent=indent)


def render(template, bos, msgs, gen):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=msgs, tools=None, documents=None, add_generation_prompt=gen,
                                            bos_token=bos, eos_token="")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="tests/data/tokenizers/chat-golden.json")
    a = ap.parse_args()

    def cfg(p):
        return json.load(open(a.shared + "/" + p, encoding="utf-8"))

    mg, l3, q3 = (cfg("models/mg-llama-27m/tokenizer_config.json"), cfg("tokenizers/llama3.1/tokenizer_config.json"),
                  cfg("tokenizers/qwen3/tokenizer_config.json"))
    templates = {
        "mg-llama-27m": (mg["chat_template"], mg["bos_token"]),
        "llama3": (l3["chat_template"], l3["bos_token"]),
        "llama3.1": (LLAMA31, "<|begin_of_text|>"),
        "qwen2": (QWEN2, None),
        "qwen2.5": (QWEN25, None),
        "qwen3": (q3["chat_template"], None),
    }
    cases = []
    for fam, (tmpl, bos) in templates.items():
        for name, msgs, gen in CONVERSATIONS:
            if name in FAMILIES[fam]["skip"]:
                continue
            cases.append({"family": fam, "name": name, "messages": msgs, "add_generation_prompt": gen,
                          "text": render(tmpl, bos or "", msgs, gen)})
    out = {
        "description": "Chat templates rendered with Jinja2 as transformers' apply_chat_template does "
                       "(tools/gen_tokenizer_chat_golden.py). `templates` maps a family to "
                       "[chat_template, bos_token]; each case renders `messages` with it.",
        "templates": {k: [v[0], v[1]] for k, v in templates.items()},
        "cases": cases,
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %s: %d cases" % (a.out, len(cases)))


if __name__ == "__main__":
    main()
