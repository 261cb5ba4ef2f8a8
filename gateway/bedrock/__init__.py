"""AWS Bedrock as a backend: signed requests out, the client's own API dialect back.

Anthropic-dialect calls (``/v1/messages``) to Claude go to InvokeModel /
InvokeModelWithResponseStream, whose body and answers are Anthropic's Messages format
(``anthropic_version: bedrock-2023-05-31``), so the answer passes through nearly as is.
OpenAI-dialect chat calls go to Converse / ConverseStream: one request and answer shape
for every model Bedrock serves (Claude, Nova, Llama, Mistral, ...), with usage that
includes cache reads and writes. Bedrock's OpenAI-compatible endpoint serves only a few
models (the gpt-oss ones), so Converse is the door that fits a routes file naming any
Bedrock model.

Streams arrive as AWS event-stream messages (binary frames with CRCs), read with
botocore's parser, and leave as the server-sent events the client's SDK expects.
"""

from __future__ import annotations

from gateway.bedrock.backend import BedrockBackends
from gateway.bedrock.translation import Translation

__all__ = ["BedrockBackends", "Translation"]
