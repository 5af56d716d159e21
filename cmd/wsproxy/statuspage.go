package main

import (
	"bytes"
	_ "embed"
	"html/template"
	"net/http"
	"time"
)

// The status page is rendered on the server from the same report as
// /status; its script fetches the page again every two seconds and swaps
// the report in, so it needs no client-side rendering of its own.

//go:embed status.html
var statusHTML string

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"now": func() string { return time.Now().UTC().Format(time.RFC3339) },
}).Parse(statusHTML))

// page serves the human status page at /.
func (a *adminServer) page(w http.ResponseWriter, _ *http.Request) {
	var buf bytes.Buffer
	if err := statusPage.Execute(&buf, a.report()); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}
