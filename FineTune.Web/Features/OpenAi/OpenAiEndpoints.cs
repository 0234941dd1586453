using System.Text.Json;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.OpenAi;

/// <summary>
/// An OpenAI-compatible API for other programs: GET /v1/models and POST /v1/chat/completions (non-streaming, or
/// server-sent events with "stream": true; temperature, top_p, max_tokens, stop). A finished run answers with its
/// adapter and the prompt layout it trained with (the same generator as the test step); a request waits while a run
/// trains on the device. When the app is exposed, requests carry the access token as "Authorization: Bearer …".
/// The run's layout is single-turn: the last user message is the question and the first system message the system
/// text; earlier turns are not shown to the model.
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

        var chat = new ChatRequest(model.Model, model.Source, model.AdapterDirectory, request.Prompt, request.MaxTokens ?? 256,
            request.Temperature ?? 0.7, request.TopP ?? 0.9, request.System,
            FourBit: model.Settings.Quantization == Quantization.Nf4, DoubleQuantization: model.Settings.DoubleQuantization, Template: model.Settings.ToPromptTemplate());
        string id = $"chatcmpl-{Guid.NewGuid():N}";
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var stops = new StopSequences(request.Stop);
        loggers.CreateLogger("FineTune.OpenAi").LogInformation("chat completion {Id} for {Model} (stream {Stream})", id, model.Id, request.Stream);

        if (!request.Stream)
        {
            var text = new System.Text.StringBuilder();
            await foreach (string piece in generator.StreamAsync(chat, cancellationToken))
            {
                text.Append(stops.Push(piece));
                if (stops.Stopped) break;
            }
            text.Append(stops.Flush());
            await http.Response.WriteAsJsonAsync(new
            {
                id, @object = "chat.completion", created, model = model.Id,
                choices = new[] { new { index = 0, message = new { role = "assistant", content = text.ToString() }, finish_reason = "stop" } },
            }, cancellationToken);
            return;
        }

        http.Response.ContentType = "text/event-stream";
        http.Response.Headers.CacheControl = "no-cache";
        async Task SendAsync(object? delta, string? finish)
        {
            string json = JsonSerializer.Serialize(new
            {
                id, @object = "chat.completion.chunk", created, model = model.Id,
                choices = new[] { new { index = 0, delta = delta ?? new { }, finish_reason = finish } },
            });
            await http.Response.WriteAsync($"data: {json}\n\n", cancellationToken);
            await http.Response.Body.FlushAsync(cancellationToken);
        }
        await SendAsync(new { role = "assistant", content = "" }, null);
        await foreach (string piece in generator.StreamAsync(chat, cancellationToken))
        {
            string ready = stops.Push(piece);
            if (ready.Length > 0) await SendAsync(new { content = ready }, null);
            if (stops.Stopped) break;
        }
        string rest = stops.Flush();
        if (rest.Length > 0) await SendAsync(new { content = rest }, null);
        await SendAsync(null, "stop");
        await http.Response.WriteAsync("data: [DONE]\n\n", cancellationToken);
    }

    private static async Task ErrorAsync(HttpContext http, int status, string message, string type, string? code)
    {
        http.Response.StatusCode = status;
        await http.Response.WriteAsJsonAsync(new { error = new { message, type, param = (string?)null, code } });
    }
}

/// <summary>The fields of a chat completion request we use, read leniently (stop as a string or a list; content as text or text parts).</summary>
public sealed record ChatCompletionRequest(string Model, string Prompt, string? System, bool Stream, double? Temperature, double? TopP, int? MaxTokens, IReadOnlyList<string> Stop)
{
    public static ChatCompletionRequest Parse(JsonElement root)
    {
        string model = root.TryGetProperty("model", out var m) && m.ValueKind == JsonValueKind.String ? m.GetString()! : throw new FormatException("'model' is required.");
        if (!root.TryGetProperty("messages", out var messages) || messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
            throw new FormatException("'messages' must be a non-empty list.");
        string? system = null, user = null;
        foreach (var message in messages.EnumerateArray())
        {
            string role = message.TryGetProperty("role", out var r) ? r.GetString() ?? "" : "";
            string content = Content(message);
            if (role is "system" or "developer") system ??= content;
            else if (role == "user") user = content;
        }
        if (user is null) throw new FormatException("'messages' has no user message.");
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
        return new ChatCompletionRequest(model, user, system, stream, temperature, topP, maxTokens, stop);
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
