// Command ferretdb runs FerretDB 1.24 (the MongoDB wire protocol on PostgreSQL
// or SQLite) for local development, tests and benchmarks.
//
// It wraps FerretDB's embeddable package instead of installing cmd/ferretdb:
// the module proxy here serves v1.24.2 but no version list, and a cmd/ferretdb
// built outside FerretDB's own repository panics at start-up for want of the
// build/version/version.txt file its release tooling generates.
//
// The default handler is postgresql: it pushes equality filters down to SQL,
// where indexes serve them. scripts/services.sh builds this command against a
// copy of the module with pushdown.patch applied, which also pushes down
// ObjectID ranges on _id with their sort, skip, limit and count (the admin
// listing's reads). The sqlite handler scans whole collections (explain
// reports filterPushdown false); it stays selectable for a machine without
// PostgreSQL.
package main

import (
	"context"
	"flag"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on")
	handler := flag.String("handler", "postgresql", "backend: postgresql or sqlite")
	postgresqlURL := flag.String("postgresql-url", "postgres://127.0.0.1:5432/ferretdb", "PostgreSQL connection string (postgresql handler)")
	sqliteURL := flag.String("sqlite-url", "file:data/", "SQLite URI: a directory, one database file per MongoDB database (sqlite handler)")
	logLevel := flag.String("log-level", "warn", "debug, info, warn or error")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		log.Fatalf("--log-level: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	config := &ferretdb.Config{
		Listener: ferretdb.ListenerConfig{TCP: *listen},
		Logger:   logger,
		Handler:  *handler,
	}
	switch *handler {
	case "postgresql":
		config.PostgreSQLURL = *postgresqlURL
	case "sqlite":
		config.SQLiteURL = *sqliteURL
	default:
		log.Fatalf("--handler: %q is neither postgresql nor sqlite", *handler)
	}

	db, err := ferretdb.New(config)
	if err != nil {
		log.Fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logger.Warn("FerretDB listening", "addr", *listen, "handler", *handler)
	if err := db.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
