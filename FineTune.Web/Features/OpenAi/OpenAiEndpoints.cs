using System.Text.Json;
using System.Text.Json.Serialization;
using FineTune.Engine.Generation;
using FineTune.Engine.Tokenization;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Runs;

namespace FineTune.Web.Features.OpenAi;

/// <summary>
/// An OpenAI-compatible API for other programs: GET /v1/models and POST /v1/chat/completions (non-streaming, or
/// server-sent events with "stream": true; temperature, top_p, max_tokens, stop). A finished run answers with its
/// adapter and the prompt layout it trained with (the same generator as the test step); a request waits while a run
/// trains on the device. When the app is exposed, requests carry the access token as "Authorization: Bearer …".
/// The whole conversation (system, user and assistant messages) is written in the run's layout (a system message only
/// where the layout has a place for it: the chat template, a custom template with {system}); responses carry
/// "usage" (and streams do with stream_options.include_usage) and finish_reason "length" when max_tokens ended the answer.
/// </summary>
public static class OpenAiEndpoints
{
    public static IEndpointRouteBuilder MapOpenAiEndpoints(this IEndpointRouteBuilder endpoints)
    {
        var v1 = endpoints.MapGroup("/v1");
        v1.MapGet("/models", async (OpenAiModels models, CancellationToken cancellationToken) =>
        {
            var list = await models.ListAsync(cancellationToken);
            return Results.Json(new
            {
                @object = "list",
                data = list.Select(m => new { id = m.Id, @object = "model", created = new DateTimeOffset(DateTime.SpecifyKind(m.Created, DateTimeKind.Utc)).ToUnixTimeSeconds(), owned_by = "finetune" }),
            });
        });
        v1.MapPost("/chat/completions", ChatCompletionsAsync).DisableAntiforgery();
        return endpoints;
    }

    private static async Task ChatCompletionsAsync(HttpContext http, OpenAiModels models, IChatGenerator generator, RunQueue queue, ILoggerFactory loggers)
    {
        var cancellationToken = http.RequestAborted;
        ChatCompletionRequest request;
        try
        {
            using var document = await JsonDocument.ParseAsync(http.Request.Body, cancellationToken: cancellationToken);
            request = ChatCompletionRequest.Parse(document.RootElement);
        }
        catch (Exception e) when (e is JsonException or FormatException)
        {
            await ErrorAsync(http, 400, e.Message, "invalid_request_error", null);
            return;
        }
        var model = await models.FindAsync(request.Model, cancellationToken);
        if (model is null)
        {
            await ErrorAsync(http, 404, $"The model '{request.Model}' does not exist; GET /v1/models lists the finished runs and their base models.", "invalid_request_error", "model_not_found");
            return;
        }

        // One device: a request waits while a run trains (the queue trains one run at a time).
        while (queue.CurrentRunId is not null) await Task.Delay(250, cancellationToken);

        var chat = ChatRequest.ForRun(model.Settings, model.AdapterDirectory, request.Messages, request.MaxTokens ?? ChatRequest.DefaultMaxNewTokens,
            request.Temperature ?? ChatRequest.DefaultTemperature, request.TopP ?? ChatRequest.DefaultTopP);
        string id = $"chatcmpl-{Guid.NewGuid():N}";
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var stops = new StopSequences(request.Stop);
        loggers.CreateLogger("FineTune.OpenAi").LogInformation("chat completion {Id} for {Model} ({Messages} messages, stream {Stream})", id, model.Id, request.Messages.Count, request.Stream);

        if (!request.Stream)
        {
            var text = new System.Text.StringBuilder();
            var (finish, usage) = await GenerateAsync(generator, chat, stops, ready => { text.Append(ready); return Task.CompletedTask; }, cancellationToken);
            await http.Response.WriteAsJsonAsync(new
            {
                id, @object = "chat.completion", created, model = model.Id,
                choices = new[] { new { index = 0, message = new { role = "assistant", content = text.ToString() }, finish_reason = finish } },
                usage,
            }, cancellationToken);
            return;
        }

        http.Response.ContentType = "text/event-stream";
        http.Response.Headers.CacheControl = "no-cache";
        // With stream_options.include_usage every chunk has "usage": null and one last chunk, with no choices, has the totals.
        async Task SendAsync(object[] choices, Usage? usage = null)
        {
            string json = request.IncludeUsage
                ? JsonSerializer.Serialize(new { id, @object = "chat.completion.chunk", created, model = model.Id, choices, usage })
                : JsonSerializer.Serialize(new { id, @object = "chat.completion.chunk", created, model = model.Id, choices });
            await http.Response.WriteAsync($"data: {json}\n\n", cancellationToken);
            await http.Response.Body.FlushAsync(cancellationToken);
        }
        static object Delta(object delta, string? finish) => new { index = 0, delta, finish_reason = finish };
        await SendAsync([Delta(new { role = "assistant", content = "" }, null)]);
        var (reason, totals) = await GenerateAsync(generator, chat, stops, ready => SendAsync([Delta(new { content = ready }, null)]), cancellationToken);
        await SendAsync([Delta(new { }, reason)]);
        if (request.IncludeUsage) await SendAsync([], totals);
        await http.Response.WriteAsync("data: [DONE]\n\n", cancellationToken);
    }

    /// <summary>
    /// Generates through the stop sequences, handing each text that may be sent to <paramref name="send"/>. finish_reason:
    /// "length" when the token limit ended the answer, else "stop" (a stop token or stop sequence). Completion tokens:
    /// the ids generated up to the end (the stop token counted), up to the piece holding the stop sequence when one cut it.
    /// </summary>
    private static async Task<(string Finish, Usage Usage)> GenerateAsync(IChatGenerator generator, ChatRequest chat, StopSequences stops, Func<string, Task> send, CancellationToken cancellationToken)
    {
        TextPiece? last = null;
        await foreach (var piece in generator.StreamAsync(chat, cancellationToken))
        {
            last = piece;
            string ready = stops.Push(piece.Text);
            if (ready.Length > 0) await send(ready);
            if (stops.Stopped) break;
        }
        string rest = stops.Flush();
        if (rest.Length > 0) await send(rest);
        string finish = !stops.Stopped && last?.Finish == FinishReason.Length ? "length" : "stop";
        int prompt = last?.PromptTokens ?? 0, completion = last?.GeneratedTokens ?? 0;
        return (finish, new Usage(prompt, completion, prompt + completion));
    }

    /// <summary>OpenAI's usage object (snake_case as on the wire).</summary>
    private sealed record Usage(
        [property: JsonPropertyName("prompt_tokens")] int PromptTokens,
        [property: JsonPropertyName("completion_tokens")] int CompletionTokens,
        [property: JsonPropertyName("total_tokens")] int TotalTokens);

    private static async Task ErrorAsync(HttpContext http, int status, string message, string type, string? code)
    {
        http.Response.StatusCode = status;
        await http.Response.WriteAsJsonAsync(new { error = new { message, type, param = (string?)null, code } });
    }
}

/// <summary>
/// The fields of a chat completion request we use, read leniently (stop as a string or a list; content as text or text
/// parts). Messages keep their order; "developer" is the newer name of "system". The conversation must end with the
/// user's message, which the model answers.
/// </summary>
public sealed record ChatCompletionRequest(
    string Model, IReadOnlyList<ChatMessage> Messages, bool Stream, bool IncludeUsage, double? Temperature, double? TopP, int? MaxTokens, IReadOnlyList<string> Stop)
{
    public static ChatCompletionRequest Parse(JsonElement root)
    {
        string model = root.TryGetProperty("model", out var m) && m.ValueKind == JsonValueKind.String ? m.GetString()! : throw new FormatException("'model' is required.");
        if (!root.TryGetProperty("messages", out var messages) || messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
            throw new FormatException("'messages' must be a non-empty list.");
        var conversation = new List<ChatMessage>();
        int index = 0;
        foreach (var message in messages.EnumerateArray())
        {
            string role = message.ValueKind == JsonValueKind.Object && message.TryGetProperty("role", out var r) && r.ValueKind == JsonValueKind.String ? r.GetString()! : "";
            conversation.Add(role switch
            {
                "system" or "developer" => ChatMessage.System(Content(message)),
                "user" => ChatMessage.User(Content(message)),
                "assistant" => ChatMessage.Assistant(Content(message)),
                _ => throw new FormatException($"'messages[{index}].role' is '{role}'; this server takes system (or developer), user and assistant messages (it has no tools)."),
            });
            index++;
        }
        if (conversation.LastOrDefault(c => c.Role != "system") is not { Role: "user" })
            throw new FormatException("'messages' must end with a user message: the model answers the user's last message.");
        double? temperature = Number(root, "temperature");
        if (temperature is < 0 or > 2) throw new FormatException("'temperature' must be between 0 and 2.");
        double? topP = Number(root, "top_p");
        if (topP is <= 0 or > 1) throw new FormatException("'top_p' must be in (0, 1].");
        int? maxTokens = (int?)(Number(root, "max_completion_tokens") ?? Number(root, "max_tokens"));
        if (maxTokens is < 1) throw new FormatException("'max_tokens' must be at least 1.");
        var stop = new List<string>();
        if (root.TryGetProperty("stop", out var s))
        {
            if (s.ValueKind == JsonValueKind.String) stop.Add(s.GetString()!);
            else if (s.ValueKind == JsonValueKind.Array) stop.AddRange(s.EnumerateArray().Select(e => e.GetString() ?? ""));
        }
        bool stream = root.TryGetProperty("stream", out var st) && st.ValueKind == JsonValueKind.True;
        bool includeUsage = stream && root.TryGetProperty("stream_options", out var so) && so.ValueKind == JsonValueKind.Object
                            && so.TryGetProperty("include_usage", out var iu) && iu.ValueKind == JsonValueKind.True;
        return new ChatCompletionRequest(model, conversation, stream, includeUsage, temperature, topP, maxTokens, stop);
    }

    private static string Content(JsonElement message)
    {
        if (!message.TryGetProperty("content", out var c)) return "";
        return c.ValueKind switch
        {
            JsonValueKind.String => c.GetString()!,
            JsonValueKind.Array => string.Concat(c.EnumerateArray().Where(p => p.TryGetProperty("text", out _)).Select(p => p.GetProperty("text").GetString())),
            _ => "",
        };
    }

    private static double? Number(JsonElement root, string name) =>
        root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : null;
}
