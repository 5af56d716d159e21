package main

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"github.com/wsproxy/wsproxy/config"
)

// With watch_config the proxy reloads itself when its file changes. A
// mounted ConfigMap never writes config.yaml: the kubelet writes a new
// timestamped directory and renames a "..data" symlink over the old one,
// and config.yaml is a symlink through "..data". So the watcher watches
// directories, not files: the directory of each file and of every hop of
// its symlinks. Any event there, once events pause for watchDebounce,
// makes it hash the files again, and only a file whose content changed
// triggers a reload: the kubelet's own churn, editors' swap files and
// touches reload nothing.
//
// The files are the config and every file it names: certificates, keys,
// CAs and the admin token, so that a renewed certificate or a rotated
// token in a mounted Secret applies as a ConfigMap update does.

// watchDebounce is how long events must pause before the files are read:
// an editor's save or a kubelet update comes as a burst of events.
const watchDebounce = 250 * time.Millisecond

// maxSymlinkHops bounds the symlinks followed from a file (a loop ends
// there).
const maxSymlinkHops = 16

// configWatch is a running watcher; nil means none.
type configWatch struct {
	cancel context.CancelFunc
	done   chan struct{}
	resync chan []string // the files of the configuration just applied
}

func (w *configWatch) stop() {
	if w == nil {
		return
	}
	w.cancel()
	<-w.done
}

// watchConfig starts, keeps or stops the watcher as cfg says, and tells a
// running one the files cfg names. The signal loop calls it after every
// reload.
func (in *instance) watchConfig(ctx context.Context, cfg *config.Config, cur *configWatch) *configWatch {
	if !cfg.WatchConfig || in.path == "" {
		if cur != nil {
			cur.stop()
			in.log.Info("watch_config off: no longer watching the configuration")
		}
		return nil
	}
	files := watchedFiles(in.path, cfg)
	if cur != nil {
		select {
		case <-cur.resync: // replace news the watcher has not taken yet
		default:
		}
		cur.resync <- files
		return cur
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		in.log.Error("watch_config: cannot watch the configuration; SIGHUP and POST /reload still reload", zap.Error(err))
		return nil
	}
	wctx, cancel := context.WithCancel(ctx)
	w := &configWatch{cancel: cancel, done: make(chan struct{}), resync: make(chan []string, 1)}
	go in.watchLoop(wctx, fw, w, files)
	return w
}

// watchedFiles lists the config file and every file it names.
func watchedFiles(path string, cfg *config.Config) []string {
	files := []string{path}
	for _, l := range cfg.Listeners {
		if l.TLS == nil {
			continue
		}
		for _, c := range l.TLS.Certificates {
			files = append(files, c.CertFile, c.KeyFile)
		}
		files = append(files, l.TLS.ClientCAFile)
	}
	for _, name := range cfg.PoolNames() {
		t := cfg.Pools[name].TLS
		files = append(files, t.CAFile, t.CertFile, t.KeyFile)
	}
	for _, r := range cfg.Routes {
		if r.JWT != nil {
			files = append(files, r.JWT.JWKSFile)
		}
		if r.Affinity != nil {
			files = append(files, r.Affinity.KeyFile)
		}
	}
	files = append(files, cfg.Admin.TokenFile)
	files = slices.DeleteFunc(files, func(f string) bool { return f == "" })
	slices.Sort(files)
	return slices.Compact(files)
}

// watchDirs returns the directories to watch for files: for each file, the
// directory that holds it once every symlink is resolved, and the
// directory of every symlink met on the way, file or directory (where a
// swap such as the kubelet's "..data" shows). Each is resolved itself, so
// that one directory is never watched under two names.
func watchDirs(files []string) map[string]bool {
	dirs := map[string]bool{}
	add := func(d string) {
		if r, err := filepath.EvalSymlinks(d); err == nil {
			d = r
		}
		dirs[d] = true
	}
	for _, f := range files {
		p, _ := filepath.Abs(f)
		followSymlinks(p, add, 0)
	}
	return dirs
}

// followSymlinks calls add with the directory of p and of the first
// symlink along p, then follows that symlink.
func followSymlinks(p string, add func(dir string), depth int) {
	add(filepath.Dir(p))
	if depth >= maxSymlinkHops {
		return
	}
	parts := strings.Split(strings.TrimPrefix(p, string(filepath.Separator)), string(filepath.Separator))
	prefix := string(filepath.Separator)
	for i, part := range parts {
		prefix = filepath.Join(prefix, part)
		fi, err := os.Lstat(prefix)
		if err != nil {
			return // gone: its directory is watched, for when it comes
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			continue
		}
		add(filepath.Dir(prefix))
		target, err := os.Readlink(prefix)
		if err != nil {
			return
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(prefix), target)
		}
		followSymlinks(filepath.Join(append([]string{target}, parts[i+1:]...)...), add, depth+1)
		return
	}
}

// fileSum is what a file holds, as far as a reload is concerned.
type fileSum [sha256.Size]byte

// sumFile hashes a file's content through its symlinks; a file that
// cannot be read hashes as its error, so that it coming back is a change.
func sumFile(f string) fileSum {
	data, err := os.ReadFile(f)
	if err != nil {
		return sha256.Sum256([]byte("unreadable: " + err.Error()))
	}
	return sha256.Sum256(data)
}

// watchLoop watches the directories of files until ctx ends, and tells
// the signal loop (in.changed) when the content of a file changed.
func (in *instance) watchLoop(ctx context.Context, fw *fsnotify.Watcher, w *configWatch, files []string) {
	defer close(w.done)
	defer fw.Close()
	log := in.log.Named("watch")
	wf := &fileWatch{fw: fw, log: log, sums: map[string]fileSum{}}
	wf.track(files)
	log.Info("watching the configuration", zap.Strings("files", files))

	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case fs := <-w.resync:
			wf.track(fs)
		case _, ok := <-fw.Events:
			if !ok {
				return
			}
			debounce.Reset(watchDebounce)
		case err, ok := <-fw.Errors:
			if !ok {
				return
			}
			log.Warn("watching the configuration", zap.Error(err))
		case <-debounce.C:
			changed := wf.changed()
			if len(changed) == 0 {
				if ce := log.Check(zap.DebugLevel, "configuration touched; no content changed"); ce != nil {
					ce.Write()
				}
				continue
			}
			log.Info("configuration changed; reloading", zap.Strings("changed", changed))
			select {
			case in.changed <- struct{}{}:
			default: // a reload is already due
			}
		}
	}
}

// fileWatch is what watchLoop follows: the files of the configuration
// applied, their content sums, and the directories watched for them. It
// belongs to watchLoop's goroutine.
type fileWatch struct {
	fw    *fsnotify.Watcher
	log   *zap.Logger
	files []string
	sums  map[string]fileSum
}

// track takes the files of the configuration applied: new ones are hashed
// as they are now, and the directories follow the symlinks as they point
// now.
func (wf *fileWatch) track(files []string) {
	wf.files = files
	for f := range wf.sums {
		if !slices.Contains(files, f) {
			delete(wf.sums, f)
		}
	}
	for _, f := range files {
		if _, ok := wf.sums[f]; !ok {
			wf.sums[f] = sumFile(f)
		}
	}
	want := watchDirs(files)
	// A removed directory drops out of the watch list by itself.
	for _, d := range wf.fw.WatchList() {
		if !want[d] {
			_ = wf.fw.Remove(d)
		}
	}
	watched := map[string]bool{}
	for _, d := range wf.fw.WatchList() {
		watched[d] = true
	}
	for d := range want {
		if watched[d] {
			continue
		}
		if err := wf.fw.Add(d); err != nil {
			wf.log.Warn("cannot watch a directory of the configuration", zap.String("dir", d), zap.Error(err))
		}
	}
}

// changed returns the files whose content changed since last seen, and
// follows a swapped "..data" symlink to its new directory.
func (wf *fileWatch) changed() []string {
	var changed []string
	for _, f := range wf.files {
		if s := sumFile(f); s != wf.sums[f] {
			wf.sums[f] = s
			changed = append(changed, f)
		}
	}
	wf.track(wf.files)
	return changed
}
