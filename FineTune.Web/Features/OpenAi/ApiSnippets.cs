using System.Globalization;

namespace FineTune.Web.Features.OpenAi;

/// <summary>Copyable examples for calling a run through the OpenAI-compatible API (shown in the test step).</summary>
public static class ApiSnippets
{
    /// <summary>What goes where the key goes: the access token when the app is exposed, else any text.</summary>
    public static string KeyPlaceholder(bool exposed) => exposed ? "YOUR-ACCESS-TOKEN" : "not-needed";

    public static string Curl(string v1Url, string modelId, bool exposed, double temperature, double topP) =>
        string.Create(CultureInfo.InvariantCulture, $$"""
            curl {{v1Url}}/chat/completions \
              -H "Content-Type: application/json" \
              -H "Authorization: Bearer {{KeyPlaceholder(exposed)}}" \
              -d '{"model": "{{modelId}}", "temperature": {{temperature}}, "top_p": {{topP}}, "messages": [{"role": "user", "content": "什麼是 LoRA？"}]}'
            """);

    public static string Python(string v1Url, string modelId, bool exposed, double temperature, double topP) =>
        string.Create(CultureInfo.InvariantCulture, $$"""
            from openai import OpenAI

            client = OpenAI(base_url="{{v1Url}}", api_key="{{KeyPlaceholder(exposed)}}")
            stream = client.chat.completions.create(
                model="{{modelId}}", temperature={{temperature}}, top_p={{topP}}, stream=True,
                messages=[{"role": "user", "content": "什麼是 LoRA？"}],
            )
            for chunk in stream:
                print(chunk.choices[0].delta.content or "", end="", flush=True)
            """);
}
