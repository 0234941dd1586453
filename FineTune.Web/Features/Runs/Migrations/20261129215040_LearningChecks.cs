using System;
using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace FineTune.Web.Features.Runs.Migrations
{
    /// <inheritdoc />
    public partial class LearningChecks : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.CreateTable(
                name: "LearningChecks",
                columns: table => new
                {
                    RunId = table.Column<int>(type: "INTEGER", nullable: false),
                    Status = table.Column<string>(type: "TEXT", maxLength: 16, nullable: false),
                    StartedAt = table.Column<DateTime>(type: "TEXT", nullable: false),
                    EndedAt = table.Column<DateTime>(type: "TEXT", nullable: false),
                    Error = table.Column<string>(type: "TEXT", nullable: true)
                },
                constraints: table =>
                {
                    table.PrimaryKey("PK_LearningChecks", x => x.RunId);
                    table.ForeignKey(
                        name: "FK_LearningChecks_Runs_RunId",
                        column: x => x.RunId,
                        principalTable: "Runs",
                        principalColumn: "Id",
                        onDelete: ReferentialAction.Cascade);
                });

            migrationBuilder.CreateTable(
                name: "LearningCheckAnswer",
                columns: table => new
                {
                    Id = table.Column<long>(type: "INTEGER", nullable: false)
                        .Annotation("Sqlite:Autoincrement", true),
                    RunId = table.Column<int>(type: "INTEGER", nullable: false),
                    RowIndex = table.Column<int>(type: "INTEGER", nullable: false),
                    BaseAnswer = table.Column<string>(type: "TEXT", nullable: false),
                    FineTunedAnswer = table.Column<string>(type: "TEXT", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("PK_LearningCheckAnswer", x => x.Id);
                    table.ForeignKey(
                        name: "FK_LearningCheckAnswer_LearningChecks_RunId",
                        column: x => x.RunId,
                        principalTable: "LearningChecks",
                        principalColumn: "RunId",
                        onDelete: ReferentialAction.Cascade);
                });

            migrationBuilder.CreateIndex(
                name: "IX_LearningCheckAnswer_RunId_RowIndex",
                table: "LearningCheckAnswer",
                columns: new[] { "RunId", "RowIndex" });
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropTable(
                name: "LearningCheckAnswer");

            migrationBuilder.DropTable(
                name: "LearningChecks");
        }
    }
}
