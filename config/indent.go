package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Keys indented too little.
//
// A key indented one level too little lands in the mapping above its own:
// a pool's `backends:` next to the pool reads as a pool named "backends",
// a route's `pool:` under a list item at column 0 as an unknown top-level
// key. Taken for what they seem, such keys give a cascade of errors that
// treat them as pool names or typos. Instead, a key that is a setting of
// the item just above it (the struct of the key before it, the last item
// of that key's list, the pool before it) is reported once, as a setting
// to indent, and decoded where it belongs, so that nothing else is
// reported for its sake. Consecutive keys that belong to the same item
// share one error.

// misplaced is a run of keys, indented too little, that belong to one
// item.
type misplaced struct {
	err    int    // the run's error, in decoder.errs
	kind   string // "a pool", "a route": the item they belong to
	they   string // where they are as written, in the plural
	others []string
	item   string // path of the item they belong to
}

// misplace reports key k, a setting of an item of kind that was indented
// too little, adding it to run when run belongs to the same item. it and
// they say where the key is as written ("names a new pool", "is a
// top-level key"), in the singular and the plural.
func (d *decoder) misplace(run **misplaced, k *yaml.Node, kpath, item, kind, it, they string) {
	if r := *run; r != nil && r.item == item {
		r.others = append(r.others, fmt.Sprintf("%s (line %d)", k.Value, k.Line))
		verb := "do"
		if len(r.others) == 1 {
			verb = "does"
		}
		d.errs[r.err].Msg = fmt.Sprintf("looks like %s setting, as %s %s: check their indentation (as written they %s)",
			r.kind, verb, andList(r.others), r.they)
		return
	}
	d.fail(k, kpath, "looks like %s setting: check its indentation (as written it %s)", kind, it)
	*run = &misplaced{err: len(d.errs) - 1, kind: kind, they: they, item: item}
}

// dedented handles key k, unknown in the struct v at path, when it is a
// setting of the item the key prev (the last known key before it) decoded
// into: it reports k and decodes it there, unless that item has k already.
func (d *decoder) dedented(run **misplaced, k, val *yaml.Node, path string, v reflect.Value, fields map[string]field, prev string) bool {
	pf, ok := fields[prev]
	if prev == "" || !ok {
		return false
	}
	item, ipath, kind := lastItem(v.FieldByIndex(pf.index), join(path, prev), prev)
	if !item.IsValid() {
		return false
	}
	f, ok := fieldsOf(item.Type())[k.Value]
	if !ok {
		return false
	}
	it, they := "is a top-level key, after "+prev, "are top-level keys, after "+prev
	if path != "" {
		it, they = fmt.Sprintf("is a key of %s, after %s", path, prev), fmt.Sprintf("are keys of %s, after %s", path, prev)
	}
	d.misplace(run, k, join(path, k.Value), ipath, withArticle(kind), it, they)
	dest := join(ipath, k.Value)
	if _, set := d.lines[dest]; !set {
		d.lines[dest] = k.Line
		d.decode(val, dest, item.FieldByIndex(f.index), f.kind)
	}
	return true
}

// lastItem returns the struct that the field at path, named name, decoded
// into last: the field itself, what it points to, or its list's last
// item; with its path and what to call it ("route" for routes[2]). It
// returns an invalid Value for anything else (a map, a scalar, an empty
// list).
func lastItem(fv reflect.Value, path, name string) (reflect.Value, string, string) {
	for fv.Kind() == reflect.Pointer {
		if fv.IsNil() {
			return reflect.Value{}, "", ""
		}
		fv = fv.Elem()
	}
	switch fv.Kind() {
	case reflect.Slice:
		if fv.Len() == 0 {
			return reflect.Value{}, "", ""
		}
		item, ipath, _ := lastItem(fv.Index(fv.Len()-1), fmt.Sprintf("%s[%d]", path, fv.Len()-1), name)
		return item, ipath, strings.TrimSuffix(name, "s")
	case reflect.Struct:
		if fv.Type().PkgPath() != configPkg || fv.Type() == hashKeyType {
			return reflect.Value{}, "", ""
		}
		return fv, path, name
	}
	return reflect.Value{}, "", ""
}

var configPkg = reflect.TypeOf(Config{}).PkgPath()

// mapEntry is an entry of a mapping of named items (pools), with the
// settings of the item that were indented too little and follow it.
type mapEntry struct {
	k, val *yaml.Node
	extra  []*yaml.Node // key, value, key, value...
}

// mapEntries splits the mapping n at path, whose values decode into elem,
// into its entries. When elem is a struct, a key that is one of its
// settings and whose value is not such a struct itself (a pool named
// "backends" with a list under it) is a setting of the entry before it,
// indented too little: it is reported and moved into that entry.
func (d *decoder) mapEntries(n *yaml.Node, path string, elem reflect.Type) []*mapEntry {
	for elem.Kind() == reflect.Pointer {
		elem = elem.Elem()
	}
	var settings map[string]field
	if elem.Kind() == reflect.Struct && elem.PkgPath() == configPkg {
		settings = fieldsOf(elem)
	}
	kind := strings.TrimSuffix(path[strings.LastIndexByte(path, '.')+1:], "s")
	var entries []*mapEntry
	var run *misplaced
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if !isSetting(k, val, settings) {
			run = nil
			entries = append(entries, &mapEntry{k: k, val: val})
			continue
		}
		if len(entries) == 0 {
			d.misplace(&run, k, join(path, k.Value), "", withArticle(kind),
				"names a new "+kind, "name new "+kind+"s")
			continue
		}
		owner := entries[len(entries)-1]
		d.misplace(&run, k, join(path, k.Value), join(path, owner.k.Value), withArticle(kind),
			fmt.Sprintf("names a new %s, after %s %s", kind, kind, owner.k.Value),
			fmt.Sprintf("name new %ss, after %s %s", kind, kind, owner.k.Value))
		owner.extra = append(owner.extra, k, val)
	}
	for _, e := range entries {
		e.val = e.withExtra()
	}
	return entries
}

// isSetting reports whether k, a key of a mapping of named items with the
// given settings, is one of those settings rather than an item's name.
func isSetting(k, val *yaml.Node, settings map[string]field) bool {
	if _, ok := settings[k.Value]; !ok {
		return false
	}
	if val.Kind == yaml.AliasNode {
		val = val.Alias
	}
	if val.Kind == yaml.MappingNode {
		for i := 0; i < len(val.Content); i += 2 {
			if _, ok := settings[val.Content[i].Value]; ok {
				return false // an item that happens to be named like a setting
			}
		}
	}
	return true
}

// withExtra returns the entry's value with the settings moved into it,
// less those it has already (reported once, as indented too little).
func (e *mapEntry) withExtra() *yaml.Node {
	val := e.val
	if len(e.extra) == 0 {
		return val
	}
	if val.Kind == yaml.AliasNode {
		val = val.Alias
	}
	var merged yaml.Node
	switch {
	case val.Kind == yaml.MappingNode:
		merged = *val
		merged.Content = slices.Clone(val.Content)
	case val.Kind == yaml.ScalarNode && val.Tag == "!!null":
		merged = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: val.Line, Column: val.Column}
	default:
		return e.val // not an item: decoding says so
	}
	for i := 0; i+1 < len(e.extra); i += 2 {
		has := false
		for j := 0; j < len(merged.Content); j += 2 {
			has = has || merged.Content[j].Value == e.extra[i].Value
		}
		if !has {
			merged.Content = append(merged.Content, e.extra[i], e.extra[i+1])
		}
	}
	return &merged
}

// withArticle puts "a" or "an" before a noun.
func withArticle(noun string) string {
	if noun != "" && strings.ContainsRune("aeiou", rune(noun[0])) {
		return "an " + noun
	}
	return "a " + noun
}

// andList joins items as "a", "a and b", "a, b and c".
func andList(items []string) string {
	if len(items) < 2 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " and " + items[len(items)-1]
}
