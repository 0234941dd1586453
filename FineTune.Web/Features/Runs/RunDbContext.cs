using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Design;

namespace FineTune.Web.Features.Runs;

/// <summary>Run history in SQLite (data/finetune.db). Schema changes go through migrations (`dotnet ef migrations add`).</summary>
public sealed class RunDbContext(DbContextOptions<RunDbContext> options) : DbContext(options)
{
    public DbSet<Run> Runs => Set<Run>();
    public DbSet<RunMetric> Metrics => Set<RunMetric>();
    public DbSet<FineTune.Web.Features.Wizard.WizardDraft> Drafts => Set<FineTune.Web.Features.Wizard.WizardDraft>();
    public DbSet<FineTune.Web.Features.Learning.LearningCheck> LearningChecks => Set<FineTune.Web.Features.Learning.LearningCheck>();

    protected override void OnModelCreating(ModelBuilder modelBuilder)
    {
        modelBuilder.Entity<Run>(run =>
        {
            run.Property(r => r.Status).HasConversion<string>().HasMaxLength(16);
            run.Property(r => r.Model).HasMaxLength(1024);
            run.Property(r => r.DatasetFileName).HasMaxLength(260);
            run.Property(r => r.DatasetHash).HasMaxLength(64);
            run.Ignore(r => r.Duration);
            run.Ignore(r => r.IsActive);
            run.HasIndex(r => r.Status);
            run.HasMany(r => r.Metrics).WithOne().HasForeignKey(m => m.RunId).OnDelete(DeleteBehavior.Cascade);
        });
        modelBuilder.Entity<RunMetric>().HasIndex(m => new { m.RunId, m.Step });
        modelBuilder.Entity<FineTune.Web.Features.Wizard.WizardDraft>(draft =>
        {
            draft.HasKey(d => d.BrowserId);
            draft.Property(d => d.BrowserId).HasMaxLength(64);
            draft.Property(d => d.FileName).HasMaxLength(260);
        });
        // "Did it learn?": one check per run (deleted with it), its answers deleted with the check.
        modelBuilder.Entity<FineTune.Web.Features.Learning.LearningCheck>(check =>
        {
            check.HasKey(c => c.RunId);
            check.Property(c => c.Status).HasConversion<string>().HasMaxLength(16);
            check.HasOne<Run>().WithOne().HasForeignKey<FineTune.Web.Features.Learning.LearningCheck>(c => c.RunId).OnDelete(DeleteBehavior.Cascade);
            check.HasMany(c => c.Answers).WithOne().HasForeignKey(a => a.RunId).OnDelete(DeleteBehavior.Cascade);
        });
        modelBuilder.Entity<FineTune.Web.Features.Learning.LearningCheckAnswer>().HasIndex(a => new { a.RunId, a.RowIndex });
    }
}

/// <summary>For `dotnet ef` only: a context without starting the web host.</summary>
internal sealed class RunDbContextDesignFactory : IDesignTimeDbContextFactory<RunDbContext>
{
    public RunDbContext CreateDbContext(string[] args) =>
        new(new DbContextOptionsBuilder<RunDbContext>().UseSqlite("Data Source=design.db").Options);
}
