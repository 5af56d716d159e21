package config

import (
	"bytes"
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Marshal returns the configuration as YAML with every default filled in,
// in the form Parse reads: durations like 10s, sizes in bytes, hash keys
// and CIDRs as written. `wsproxy check` prints it.
func (c *Config) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(encode(reflect.ValueOf(c).Elem())); err != nil {
		return nil, fmt.Errorf("config: marshal: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("config: marshal: %w", err)
	}
	return buf.Bytes(), nil
}

func scalar(tag, value string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: value}
}

// encode turns a config value into a YAML node, following the same yaml
// tags the decoder reads.
func encode(v reflect.Value) *yaml.Node {
	switch v.Type() {
	case durationType:
		return scalar("", FormatDuration(time.Duration(v.Int())))
	case prefixType:
		p := v.Interface().(netip.Prefix)
		if p.Bits() == p.Addr().BitLen() {
			return scalar("!!str", p.Addr().String())
		}
		return scalar("!!str", p.String())
	case hashKeyType:
		return scalar("!!str", v.Interface().(HashKey).String())
	case secureType:
		if v.String() == string(SecureAuto) {
			return scalar("!!str", v.String())
		}
		return scalar("!!bool", v.String())
	}
	switch v.Kind() {
	case reflect.Pointer:
		return encode(v.Elem())
	case reflect.Struct:
		m := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		encodeFields(m, v)
		return m
	case reflect.Slice:
		s := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		if v.Len() > 0 && v.Index(0).Kind() != reflect.Struct && v.Index(0).Kind() != reflect.Pointer {
			s.Style = yaml.FlowStyle
		}
		for i := 0; i < v.Len(); i++ {
			s.Content = append(s.Content, encode(v.Index(i)))
		}
		return s
	case reflect.Map:
		m := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		keys := make([]string, 0, v.Len())
		for _, k := range v.MapKeys() {
			keys = append(keys, k.String())
		}
		sort.Strings(keys)
		for _, k := range keys {
			m.Content = append(m.Content, scalar("!!str", k), encode(v.MapIndex(reflect.ValueOf(k))))
		}
		return m
	case reflect.String:
		return scalar("!!str", v.String())
	case reflect.Bool:
		return scalar("!!bool", strconv.FormatBool(v.Bool()))
	case reflect.Int, reflect.Int64:
		return scalar("!!int", strconv.FormatInt(v.Int(), 10))
	case reflect.Float64:
		return scalar("", strconv.FormatFloat(v.Float(), 'g', -1, 64))
	}
	panic("config: cannot encode " + v.Type().String())
}

// encodeFields appends a struct's keys to m, flattening inline structs and
// leaving out nil pointers (an absent tls block).
func encodeFields(m *yaml.Node, v reflect.Value) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		fv := v.Field(i)
		if opts == "inline" {
			encodeFields(m, fv)
			continue
		}
		if fv.Kind() == reflect.Pointer && fv.IsNil() {
			continue
		}
		m.Content = append(m.Content, scalar("!!str", name), encode(fv))
	}
}

// FormatDuration writes d the short way a person would: 10m rather than
// Go's 10m0s, 0 for zero.
func FormatDuration(d time.Duration) string {
	if d == 0 {
		return "0"
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
