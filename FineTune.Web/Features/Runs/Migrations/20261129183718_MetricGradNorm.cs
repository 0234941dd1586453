using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace FineTune.Web.Features.Runs.Migrations
{
    /// <inheritdoc />
    public partial class MetricGradNorm : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<double>(
                name: "GradNorm",
                table: "Metrics",
                type: "REAL",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "GradNorm",
                table: "Metrics");
        }
    }
}
