package config

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// FieldError is one mistake in a configuration file.
type FieldError struct {
	File string
	Line int
	Key  string // dotted path, e.g. pools.chat.backends[1].address
	Msg  string
}

func (e FieldError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Key, e.Msg)
}

// Errors is every mistake found in a file, in line order.
type Errors []FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Load reads and validates the configuration file at path. On failure the
// error is Errors, listing every mistake.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Errors{{File: path, Line: 0, Msg: err.Error()}}
	}
	return Parse(path, data)
}

// Parse decodes and validates a configuration. name is reported in errors
// and its directory anchors relative file paths.
func Parse(name string, data []byte) (*Config, error) {
	d := &decoder{file: name, dir: filepath.Dir(name), lines: map[string]int{}}
	cfg := defaults()
	d.cfg = cfg
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		d.errs = append(d.errs, syntaxError(name, data, err))
		return nil, d.errors()
	}
	if len(root.Content) == 0 {
		d.errs = append(d.errs, FieldError{File: name, Line: 1, Msg: "the file is empty"})
		return nil, d.errors()
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		d.fail(doc, "", "the top level must be a mapping of keys, got %s", describe(doc))
		return nil, d.errors()
	}
	d.lines[""] = doc.Line
	// Defaults first: routes start from them, wherever the key stands.
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value == "defaults" {
			d.lines["defaults"] = doc.Content[i].Line
			d.decode(doc.Content[i+1], "defaults", reflect.ValueOf(&cfg.Defaults).Elem(), "")
		}
	}
	d.decodeStruct(doc, "", reflect.ValueOf(cfg).Elem(), map[string]bool{"defaults": true})
	for name, p := range cfg.Pools {
		p.Name = name
	}
	d.resolvePaths()
	d.validate()
	if len(d.errs) > 0 {
		return nil, d.errors()
	}
	return cfg, nil
}

// syntaxError turns a YAML parse error into a FieldError at the line to
// edit.
func syntaxError(file string, data []byte, err error) FieldError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 1
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.IndexByte(rest, ':'); i > 0 {
			if n, err := strconv.Atoi(rest[:i]); err == nil {
				line = n
				msg = strings.TrimSpace(rest[i+1:])
				// yaml.v3 counts lines from 0 in its parser's errors
				// (unlike its scanner's): they all start this way.
				if strings.HasPrefix(msg, "did not find expected") {
					line++
				}
			}
		}
	}
	line, text := problemLine(data, err, line)
	indent := text[:len(text)-len(strings.TrimLeft(text, " \t"))]
	switch {
	case strings.Contains(indent, "\t") || strings.Contains(msg, "tab character"):
		msg += " (indent with spaces, not tabs)"
	case strings.HasPrefix(msg, "did not find expected key"), strings.HasPrefix(msg, "did not find expected '-' indicator"):
		msg += " (check this line's indentation)"
	}
	return FieldError{File: file, Line: line, Msg: "invalid YAML: " + msg}
}

// problemLine returns the line where the YAML parser met its problem, and
// that line's text. yaml.v3 reports the line of the construct it was
// parsing: the mapping that a misindented list item breaks, the scalar
// before a line indented with a tab, lines before the one to edit. The
// prefixes of the file in whole lines fail with that very error (same
// message, same line) from the problem's line on, and parse or fail
// otherwise before it, so a binary search from the reported line finds
// it. Files with line breaks other than LF and CRLF, which yaml.v3 counts
// too, keep the reported line.
func problemLine(data []byte, err error, reported int) (int, string) {
	if !utf8.Valid(data) || bytes.ContainsAny(data, "\u0085\u2028\u2029") ||
		bytes.Count(data, []byte("\r")) != bytes.Count(data, []byte("\r\n")) {
		return reported, ""
	}
	var ends []int // ends[i] is the offset just past line i+1
	for i, c := range data {
		if c == '\n' {
			ends = append(ends, i+1)
		}
	}
	if len(ends) == 0 || ends[len(ends)-1] != len(data) {
		ends = append(ends, len(data))
	}
	fails := func(lines int) bool {
		var n yaml.Node
		e := yaml.Unmarshal(data[:ends[lines-1]], &n)
		return e != nil && e.Error() == err.Error()
	}
	lo, hi := max(1, min(reported-1, len(ends))), len(ends)
	for lo < hi {
		if mid := (lo + hi) / 2; fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	if !fails(lo) {
		return reported, ""
	}
	start := 0
	if lo > 1 {
		start = ends[lo-2]
	}
	return lo, strings.TrimRight(string(data[start:ends[lo-1]]), "\r\n")
}

// decoder walks a YAML tree into a Config, recording the line of every key
// and collecting every error.
type decoder struct {
	file  string
	dir   string
	cfg   *Config
	errs  []FieldError
	lines map[string]int // key path -> line
	// unexpanded are the file keys whose ${CREDENTIALS_DIRECTORY} could
	// not be expanded: reported once, not again as a missing file.
	unexpanded map[string]bool
}

func (d *decoder) errors() error {
	sort.SliceStable(d.errs, func(i, j int) bool { return d.errs[i].Line < d.errs[j].Line })
	return Errors(d.errs)
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, FieldError{File: d.file, Line: n.Line, Key: path, Msg: fmt.Sprintf(format, args...)})
}

// failAt reports an error at the line of path, or of its nearest parent
// that appears in the file.
func (d *decoder) failAt(path, format string, args ...any) {
	d.errs = append(d.errs, FieldError{File: d.file, Line: d.line(path), Key: path, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) line(path string) int {
	for {
		if l, ok := d.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return d.lines[""]
		}
		path = path[:i]
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// describe names a node's kind for messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "nothing"
		case "!!bool":
			return "a boolean " + n.Value
		case "!!int":
			return "an integer " + n.Value
		case "!!float":
			return "a number " + n.Value
		}
		return strconv.Quote(n.Value)
	}
	return "something else"
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	prefixType   = reflect.TypeOf(netip.Prefix{})
	hashKeyType  = reflect.TypeOf(HashKey{})
	secureType   = reflect.TypeOf(Secure(""))
)

// decode decodes n into v. kind is "size" for byte sizes.
func (d *decoder) decode(n *yaml.Node, path string, v reflect.Value, kind string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch v.Type() {
	case durationType:
		if dur, ok := d.duration(n, path); ok {
			v.SetInt(int64(dur))
		}
		return
	case prefixType:
		if p, ok := d.prefix(n, path); ok {
			v.Set(reflect.ValueOf(p))
		}
		return
	case hashKeyType:
		if k, ok := d.hashKey(n, path); ok {
			v.Set(reflect.ValueOf(k))
		}
		return
	case secureType:
		if sec, ok := d.secure(n, path); ok {
			v.SetString(string(sec))
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if n.Tag == "!!null" {
			return
		}
		p := reflect.New(v.Type().Elem())
		d.initValue(p.Elem())
		d.decode(n, path, p.Elem(), kind)
		v.Set(p)
	case reflect.Struct:
		if n.Tag == "!!null" {
			return
		}
		d.decodeStruct(n, path, v, nil)
	case reflect.Slice:
		if n.Tag == "!!null" {
			v.Set(reflect.Zero(v.Type()))
			return
		}
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "want a list, got %s", describe(n))
			return
		}
		if len(n.Content) == 0 {
			v.Set(reflect.Zero(v.Type())) // [] and an absent key mean the same
			return
		}
		out := reflect.MakeSlice(v.Type(), 0, len(n.Content))
		for i, item := range n.Content {
			ipath := fmt.Sprintf("%s[%d]", path, i)
			d.lines[ipath] = item.Line
			e := reflect.New(v.Type().Elem()).Elem()
			d.initValue(e)
			d.decode(item, ipath, e, kind)
			out = reflect.Append(out, e)
		}
		v.Set(out)
	case reflect.Map:
		if n.Tag == "!!null" {
			return
		}
		if n.Kind != yaml.MappingNode {
			d.fail(n, path, "want a mapping, got %s", describe(n))
			return
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		for _, ent := range d.mapEntries(n, path, v.Type().Elem()) {
			k, val := ent.k, ent.val
			kpath := join(path, k.Value)
			if v.MapIndex(reflect.ValueOf(k.Value)).IsValid() {
				d.fail(k, kpath, "defined twice")
				continue
			}
			d.lines[kpath] = k.Line
			e := reflect.New(v.Type().Elem()).Elem()
			d.initValue(e)
			d.decode(val, kpath, e, kind)
			if e.Kind() == reflect.Pointer && e.IsNil() { // "name:" with nothing after it
				e.Set(reflect.New(e.Type().Elem()))
				d.initValue(e.Elem())
			}
			v.SetMapIndex(reflect.ValueOf(k.Value), e)
		}
	case reflect.String:
		if s, ok := d.str(n, path); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			d.fail(n, path, "want true or false, got %s", describe(n))
			return
		}
		b, _ := strconv.ParseBool(n.Value)
		v.SetBool(b)
	case reflect.Int, reflect.Int64:
		if kind == "size" {
			if sz, ok := d.size(n, path); ok {
				v.SetInt(sz)
			}
			return
		}
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			d.fail(n, path, "want an integer, got %s", describe(n))
			return
		}
		i, err := strconv.ParseInt(n.Value, 0, 64)
		if err != nil {
			d.fail(n, path, "want an integer, got %s", describe(n))
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") {
			d.fail(n, path, "want a number, got %s", describe(n))
			return
		}
		f, err := strconv.ParseFloat(n.Value, 64)
		if err != nil { // .inf, .nan, or out of range
			d.fail(n, path, "want a finite number, got %s", n.Value)
			return
		}
		v.SetFloat(f)
	default:
		d.fail(n, path, "cannot decode into %s", v.Type())
	}
}

// initValue fills a new element with its defaults before its keys are
// read: a route starts from the defaults section, a backend with weight
// 1, a pool with its defaults.
func (d *decoder) initValue(v reflect.Value) {
	switch p := v.Addr().Interface().(type) {
	case *Route:
		p.Limits = d.cfg.Defaults
	case *Backend:
		*p = defaultBackend()
	case *Pool:
		*p = defaultPool()
	case *ListenerTLS:
		*p = defaultListenerTLS()
	case *ACME:
		*p = ACME{DirectoryURL: DefaultACMEDirectory}
	case *Discovery:
		*p = defaultDiscovery()
	case *Auth:
		*p = defaultAuth()
	case *JWT:
		*p = defaultJWT()
	case *Affinity:
		*p = defaultAffinity()
	}
}

// field is a key a struct accepts.
type field struct {
	index []int
	kind  string
}

// fieldsOf lists the keys of a struct type, with inline structs' keys
// flattened in.
func fieldsOf(t reflect.Type) map[string]field {
	out := map[string]field{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if opts == "inline" {
			for k, sub := range fieldsOf(f.Type) {
				out[k] = field{index: append([]int{i}, sub.index...), kind: sub.kind}
			}
			continue
		}
		kind := ""
		if f.Name == "MaxMessageBytes" || f.Name == "MaxHeaderBytes" {
			kind = "size"
		}
		out[name] = field{index: []int{i}, kind: kind}
	}
	return out
}

// decodeStruct decodes a mapping into a struct, reporting unknown and
// repeated keys. Keys in skip are left alone.
func (d *decoder) decodeStruct(n *yaml.Node, path string, v reflect.Value, skip map[string]bool) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "want a mapping of keys, got %s", describe(n))
		return
	}
	fields := fieldsOf(v.Type())
	seen := map[string]bool{}
	prev := "" // the last known key
	var run *misplaced
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		kpath := join(path, k.Value)
		if skip[k.Value] {
			prev, run = k.Value, nil
			continue
		}
		f, ok := fields[k.Value]
		if !ok {
			if !d.dedented(&run, k, val, path, v, fields, prev) {
				run = nil
				d.fail(k, kpath, "unknown key%s", suggest(k.Value, fields))
			}
			continue
		}
		prev, run = k.Value, nil
		if seen[k.Value] {
			d.fail(k, kpath, "defined twice")
			continue
		}
		seen[k.Value] = true
		d.lines[kpath] = k.Line
		d.decode(val, kpath, v.FieldByIndex(f.index), f.kind)
	}
}

// suggest names the known key closest to a typo, or all of them.
func suggest(key string, fields map[string]field) string {
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	norm := func(s string) string {
		return strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(s))
	}
	best, bestDist := "", 3 // at most two edits away
	for _, k := range names {
		if dist := editDistance(norm(key), norm(k)); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %s?)", best)
	}
	return " (known keys: " + strings.Join(names, ", ") + ")"
}

// editDistance is the Levenshtein distance between two short strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (d *decoder) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, "want a string, got %s", describe(n))
		return "", false
	}
	switch n.Tag {
	case "!!str", "!!int", "!!float":
		return n.Value, true
	case "!!null":
		return "", true
	}
	d.fail(n, path, "want a string, got %s", describe(n))
	return "", false
}

func (d *decoder) duration(n *yaml.Node, path string) (time.Duration, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return 0, false
	}
	if s == "0" {
		return 0, true
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		d.fail(n, path, "bad duration %q: use a number with a unit, like 500ms, 10s, 5m", s)
		return 0, false
	}
	if dur < 0 {
		d.fail(n, path, "bad duration %q: must not be negative", s)
		return 0, false
	}
	return dur, true
}

// sizeUnits are the suffixes a size may carry.
var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"B", 1},
}

func (d *decoder) size(n *yaml.Node, path string) (int64, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return 0, false
	}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		d.fail(n, path, "bad size %q: use a number of bytes, or one with a unit like 64KiB, 1MiB, 1MB", s)
		return 0, false
	}
	return v * mult, true
}

func (d *decoder) prefix(n *yaml.Node, path string) (netip.Prefix, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return netip.Prefix{}, false
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	d.fail(n, path, "bad CIDR %q: use an address or a prefix like 10.0.0.0/8", s)
	return netip.Prefix{}, false
}

func (d *decoder) hashKey(n *yaml.Node, path string) (HashKey, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return HashKey{}, false
	}
	kind, name, hasName := strings.Cut(s, ":")
	switch {
	case s == "" || s == "ip":
		return HashKey{Kind: HashIP}, true
	case s == "path":
		return HashKey{Kind: HashPath}, true
	case hasName && name != "" && !strings.ContainsAny(name, " \t:"):
		switch kind {
		case "header":
			return HashKey{Kind: HashHeader, Name: name}, true
		case "cookie":
			return HashKey{Kind: HashCookie, Name: name}, true
		case "query":
			return HashKey{Kind: HashQuery, Name: name}, true
		}
	}
	d.fail(n, path, "bad hash key %q: want ip, path, header:NAME, cookie:NAME or query:NAME", s)
	return HashKey{}, false
}

// secure decodes an affinity cookie's secure setting: true, false or auto.
func (d *decoder) secure(n *yaml.Node, path string) (Secure, bool) {
	if n.Kind == yaml.ScalarNode {
		switch strings.ToLower(n.Value) {
		case "true":
			return SecureAlways, true
		case "false":
			return SecureNever, true
		case "auto":
			return SecureAuto, true
		}
	}
	d.fail(n, path, "want auto, true or false, got %s", describe(n))
	return "", false
}

// resolvePaths expands ${CREDENTIALS_DIRECTORY} in the config's file paths
// and makes them absolute, relative to the config file's directory.
func (d *decoder) resolvePaths() {
	abs := func(key string, p *string) {
		*p = d.expandCredentials(key, *p)
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(d.dir, *p)
		}
	}
	for i := range d.cfg.Listeners {
		if t := d.cfg.Listeners[i].TLS; t != nil {
			key := fmt.Sprintf("listeners[%d].tls", i)
			for j := range t.Certificates {
				ckey := fmt.Sprintf("%s.certificates[%d]", key, j)
				abs(ckey+".cert_file", &t.Certificates[j].CertFile)
				abs(ckey+".key_file", &t.Certificates[j].KeyFile)
			}
			abs(key+".client_ca_file", &t.ClientCAFile)
			if a := t.ACME; a != nil {
				abs(key+".acme.ca_file", &a.CAFile)
				abs(key+".acme.storage", &a.Storage)
			}
		}
	}
	for name, p := range d.cfg.Pools {
		abs("pools."+name+".tls.ca_file", &p.TLS.CAFile)
		abs("pools."+name+".tls.cert_file", &p.TLS.CertFile)
		abs("pools."+name+".tls.key_file", &p.TLS.KeyFile)
	}
	for i := range d.cfg.Routes {
		if j := d.cfg.Routes[i].JWT; j != nil {
			abs(fmt.Sprintf("routes[%d].jwt.jwks_file", i), &j.JWKSFile)
		}
		if a := d.cfg.Routes[i].Affinity; a != nil {
			abs(fmt.Sprintf("routes[%d].affinity.key_file", i), &a.KeyFile)
		}
	}
	abs("admin.token_file", &d.cfg.Admin.TokenFile)
	abs("pid_file", &d.cfg.PIDFile)
	if dir, err := filepath.Abs(d.dir); err == nil {
		d.dir = dir
	}
}

// credentialsVar is the one variable a file path may name: the directory
// where systemd puts the files of LoadCredential=, readable by the
// service's own (possibly dynamic) user whoever owns the originals.
const credentialsVar = "${CREDENTIALS_DIRECTORY}"

// expandCredentials replaces ${CREDENTIALS_DIRECTORY} in a file path with
// the environment's value; with the variable unset the path is refused
// rather than read from the root directory.
func (d *decoder) expandCredentials(key, p string) string {
	if !strings.Contains(p, credentialsVar) {
		return p
	}
	dir := os.Getenv("CREDENTIALS_DIRECTORY")
	if dir == "" {
		d.failAt(key, "%s names ${CREDENTIALS_DIRECTORY}, which is not set: systemd sets it for a service with LoadCredential=", p)
		if d.unexpanded == nil {
			d.unexpanded = map[string]bool{}
		}
		d.unexpanded[key] = true
		return p
	}
	return strings.ReplaceAll(p, credentialsVar, dir)
}
