package acmecert

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Check validates opts as New would use them, without contacting the CA
// and without leaving anything behind: the CA file must hold PEM
// certificates, and storage must be a directory this process can write, or
// be creatable in the nearest existing parent.
func Check(opts Options) error {
	if len(opts.Domains) == 0 {
		return errors.New("acmecert: no domains")
	}
	if _, err := caTransport(opts.CAFile); err != nil {
		return err
	}
	return checkStorage(opts.Storage)
}

// checkStorage tries to create and remove a file in dir, or in the nearest
// parent that exists when dir does not (New would create it).
func checkStorage(dir string) error {
	if dir == "" {
		return errors.New("acmecert: no storage directory")
	}
	probe := dir
	for {
		fi, err := os.Stat(probe)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("acmecert: storage %s: %s is not a directory", dir, probe)
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return fmt.Errorf("acmecert: storage: %w", err)
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			return fmt.Errorf("acmecert: storage %s: no parent directory exists", dir)
		}
		probe = parent
	}
	f, err := os.CreateTemp(probe, ".wsproxy-check-*")
	if err != nil {
		if probe != dir {
			return fmt.Errorf("acmecert: storage %s does not exist and cannot be created: %w", dir, err)
		}
		return fmt.Errorf("acmecert: storage %s is not writable: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}
