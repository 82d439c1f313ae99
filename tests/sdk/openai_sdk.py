"""Drives a d8 cluster of echo workers with the official `openai` Python SDK,
the way an agent framework would. Run by `tests/it/openai_sdk.rs` with
OPENAI_BASE_URL and OPENAI_API_KEY set; prints one line per check and exits
non-zero on the first failure."""

import json
import sys

import openai

client = openai.OpenAI(max_retries=0, timeout=30)


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    print(f"ok   {name}")


# Models: the workers' and the virtual ones; ids may contain a slash.
ids = [m.id for m in client.models.list()]
check("models.list", "echo" in ids and "d8/auto" in ids, ids)
check("models.retrieve with a slash", client.models.retrieve("d8/auto").id == "d8/auto")

# A plain chat.
r = client.chat.completions.create(
    model="echo", messages=[{"role": "user", "content": "hello there"}]
)
check("chat content", r.choices[0].message.content == "hello there", r)
check("chat finish_reason", r.choices[0].finish_reason == "stop", r)
check("chat usage", r.usage is not None and r.usage.completion_tokens == 2, r.usage)
check("chat id", r.id.startswith("chatcmpl-"), r.id)

# d8's own knobs ride in extra_body.
r = client.chat.completions.create(
    model="d8/auto",
    messages=[{"role": "user", "content": "knobs"}],
    extra_body={"d8": {"priority": 9, "max_tier": "local"}},
)
check("extra_body d8 knobs", r.choices[0].message.content == "knobs", r)

# Streaming, with usage at the end.
stream = client.chat.completions.create(
    model="echo",
    messages=[{"role": "user", "content": "stream me please"}],
    stream=True,
    stream_options={"include_usage": True},
)
text, usage, finish = "", None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
        finish = c.finish_reason or finish
check("stream text", text == "stream me please", text)
check("stream finish_reason", finish == "stop", finish)
check("stream usage", usage is not None and usage.completion_tokens == 3, usage)

# Tools: the model calls one, the result goes back, the answer is final.
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
messages = [{"role": "user", "content": json.dumps({"city": "Paris"})}]
r = client.chat.completions.create(model="echo", messages=messages, tools=tools)
call = r.choices[0].message.tool_calls[0]
check("tool call", call.function.name == "get_weather", r)
check("tool call arguments", json.loads(call.function.arguments) == {"city": "Paris"}, call)
check("tool call finish_reason", r.choices[0].finish_reason == "tool_calls", r)
messages.append(r.choices[0].message.model_dump(exclude_none=True))
messages.append({"role": "tool", "tool_call_id": call.id, "content": "21 C, sunny"})
r = client.chat.completions.create(model="echo", messages=messages, tools=tools)
check("tool result answered", r.choices[0].message.content == "21 C, sunny", r)

# Streamed tool calls accumulate through the SDK's own helper.
with client.chat.completions.stream(
    model="echo", messages=[{"role": "user", "content": "Rome"}], tools=tools
) as s:
    final = s.get_final_completion()
check(
    "streamed tool call",
    final.choices[0].message.tool_calls[0].function.arguments == '{"text":"Rome"}',
    final,
)

# Embeddings: the SDK asks for base64 by default and decodes it.
e = client.embeddings.create(model="echo-embed", input=["alpha beta", "gamma", "alpha beta"])
vectors = [d.embedding for d in e.data]
check("embeddings count", len(vectors) == 3, e)
check("embeddings dimensions", all(len(v) == 8 for v in vectors), vectors)
check("embeddings deterministic", vectors[0] == vectors[2] and vectors[0] != vectors[1], vectors)
check("embeddings unit length", abs(sum(x * x for x in vectors[1]) - 1.0) < 1e-4, vectors[1])
f = client.embeddings.create(model="echo-embed", input="gamma", encoding_format="float")
check("float equals base64", [round(x, 5) for x in f.data[0].embedding] == [round(x, 5) for x in vectors[1]], f)
try:
    client.embeddings.create(model="echo-embed", input=[[1, 2, 3]])
    check("token arrays are an error", False)
except openai.BadRequestError as err:
    check("token arrays are BadRequestError naming input", err.body.get("param") == "input", err.body)

# Errors arrive as the SDK's typed exceptions.
try:
    client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])
    check("unknown model is an error", False)
except openai.NotFoundError as e:
    check("unknown model is NotFoundError", e.body.get("code") == "model_not_found", e.body)
try:
    client.chat.completions.create(model="echo", n=2, messages=[{"role": "user", "content": "x"}])
    check("n=2 is an error", False)
except openai.BadRequestError as e:
    check("n=2 is BadRequestError naming the param", e.body.get("param") == "n", e.body)
try:
    openai.OpenAI(api_key="wrong", max_retries=0).models.list()
    check("a wrong key is an error", False)
except openai.AuthenticationError:
    check("a wrong key is AuthenticationError", True)

print("all checks passed")
