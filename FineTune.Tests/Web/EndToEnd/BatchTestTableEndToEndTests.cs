using System.Runtime.CompilerServices;
using System.Text.Json;
using FineTune.Engine.Data;
using FineTune.Engine.Generation;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Playwright;
using Xunit.Abstractions;

namespace FineTune.Tests.Web.EndToEnd;

/// <summary>
/// The test step's batch-test table with long answers, in a real browser at 1280 px: the question and expected-answer
/// columns keep a readable width, long answers (sentences and an unbroken URL) wrap inside their cells, and nothing
/// overflows the table sideways. Screenshots 5-test-batch-long (zh-TW and English).
/// </summary>
[Collection(nameof(WizardEndToEndTests))]
[Trait(Category.Name, Category.EndToEnd)]
[Trait(Category.Name, Category.Slow)]
public sealed class BatchTestTableEndToEndTests(ITestOutputHelper output)
{
    /// <summary>The narrowest a question or expected-answer column may be: about ten CJK characters or two English words a line.</summary>
    private const double ReadableColumnPixels = 150;

    private const string Url = "https://example.com/support/returns-and-refunds/policy-2026/without-any-spaces-to-break-at";

    private static readonly QaRow[] ZhRows =
    [
        new("可以退貨嗎？", "可以，七天內未拆封的商品都能退貨，運費由我們負擔。", SourceRow: 2),
        new("保固期多久？", "所有產品保固一年，自購買日起算。", SourceRow: 3),
        new("營業時間是幾點到幾點？", "週一至週五上午九點到下午六點。", SourceRow: 4),
    ];

    private static readonly QaRow[] EnRows =
    [
        new("Can I return a product?", "Yes, unopened products can be returned within seven days; we pay the shipping.", SourceRow: 2),
        new("How long is the warranty?", "Every product has a one-year warranty from the date of purchase.", SourceRow: 3),
        new("When are you open?", "Monday to Friday, 9 a.m. to 6 p.m.", SourceRow: 4),
    ];

    private static string LongAnswer(string locale, bool fineTuned) => locale == "zh-TW"
        ? string.Concat(Enumerable.Repeat(fineTuned
            ? "您好，感謝您的來信。我們提供七天鑑賞期，商品需保持完整包裝與配件，並請附上發票，退款將於收到商品後五個工作天內完成。"
            : "這是一個很好的問題，答案取決於許多因素，包括商品種類、購買通路以及當地法規，建議您詳細閱讀相關條款後再做決定。", 5)) + Url
        : string.Concat(Enumerable.Repeat(fineTuned
            ? "Thank you for reaching out. Returns are accepted within seven days of delivery when the product is unused and in its original packaging with the invoice; refunds follow within five working days. "
            : "That is a great question, and the answer depends on many factors, including the kind of product, where it was bought and the local regulations, so please read the terms carefully. ", 4)) + Url;

    /// <summary>A generator without a model that answers every batch question at length, as an untrained or chatty model does.</summary>
    private sealed class LongAnswers(string locale) : IChatGenerator
    {
        public async IAsyncEnumerable<TextPiece> StreamAsync(ChatRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
        {
            await Task.Yield();
            string text = LongAnswer(locale, fineTuned: request.AdapterDirectory is not null);
            yield return new TextPiece(text, 20, 300, FinishReason.Length);
        }
    }

    [BrowserFact]
    public Task Long_answers_wrap_and_leave_the_question_readable_in_zh_TW() => BatchTableAsync("zh-TW", "", ZhRows);

    [BrowserFact]
    public Task Long_answers_wrap_and_leave_the_question_readable_in_english() => BatchTableAsync("en", "en-", EnRows);

    private async Task BatchTableAsync(string locale, string prefix, QaRow[] rows)
    {
        using var app = new WebAppHost(services: s => s.AddSingleton<IChatGenerator>(new LongAnswers(locale)));
        int runId = await FinishedRuns.CreateAsync(app, store => store.CreateAsync(
            new TrainingSettings { Source = ModelSource.Local, Model = TestFiles.Fixture("models/qwen2") }, rows, "faq.xlsx", null));
        await using var browser = await BrowserSession.StartAsync(app.BaseAddress, locale);
        var page = browser.Page;
        try
        {
            await browser.GotoAsync($"/runs/{runId}");
            await page.Locator("[data-testid=next-test]").ClickAsync();
            await Assertions.Expect(page.Locator("[data-testid=step-test]")).ToBeVisibleAsync();
            await page.Locator("[data-testid=batch-run]").ClickAsync();
            await Assertions.Expect(page.Locator("[data-testid=batch-fine-tuned]")).ToHaveCountAsync(rows.Length);
            await Assertions.Expect(page.Locator("[data-testid=batch-run]")).ToBeEnabledAsync(new() { Timeout = 60_000 });
            await Assertions.Expect(page.Locator("[data-testid=batch-fine-tuned]").Last).ToContainTextAsync(Url);

            var layout = JsonDocument.Parse(await page.EvaluateAsync<string>("""
                () => {
                    const table = document.querySelector('[data-testid=batch-table]');
                    const container = table.querySelector('.mud-table-container') ?? table;
                    const header = [...table.querySelectorAll('thead th')].map(th => th.getBoundingClientRect().width);
                    const answer = table.querySelector('[data-testid=batch-fine-tuned]');
                    const lineHeight = parseFloat(getComputedStyle(answer).lineHeight);
                    const fontSize = parseFloat(getComputedStyle(answer).fontSize);
                    return JSON.stringify({
                        header,
                        overflow: container.scrollWidth - container.clientWidth,
                        answerWidth: answer.getBoundingClientRect().width,
                        answerLines: answer.scrollHeight / lineHeight,
                        answerShownEm: answer.clientHeight / fontSize,
                        answerOverflowsSideways: answer.scrollWidth > answer.clientWidth + 1,
                    });
                }
                """)).RootElement;
            output.WriteLine($"{locale}: {layout}");
            double[] header = [.. layout.GetProperty("header").EnumerateArray().Select(w => w.GetDouble())];
            Assert.Equal(4, header.Length); // question, expected, base, fine-tuned
            Assert.True(header[0] >= ReadableColumnPixels, $"the question column is {header[0]:0} px wide: {layout}");
            Assert.True(header[1] >= ReadableColumnPixels, $"the expected-answer column is {header[1]:0} px wide: {layout}");
            Assert.True(layout.GetProperty("overflow").GetDouble() <= 1, $"the table overflows sideways: {layout}");
            Assert.False(layout.GetProperty("answerOverflowsSideways").GetBoolean(), $"the long answer (its URL) runs out of its cell: {layout}");
            Assert.True(layout.GetProperty("answerLines").GetDouble() >= 4, $"the long answer does not wrap: {layout}");
            Assert.True(layout.GetProperty("answerShownEm").GetDouble() <= 12.5, $"a long answer stretches its row beyond 12em: {layout}");

            await page.Locator("[data-testid=batch-table]").ScrollIntoViewIfNeededAsync();
            await browser.ScreenshotAsync(prefix + "5-test-batch-long");
        }
        catch
        {
            await browser.RecordFailureAsync(prefix + nameof(BatchTestTableEndToEndTests));
            throw;
        }
    }
}
