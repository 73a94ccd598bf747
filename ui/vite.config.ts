import { resolve } from 'node:path';
import { defineConfig } from 'vitest/config';

// `--mode mock` builds the page with an in-memory backend (for browser tests) into dist-mock.
export default defineConfig(({ mode }) => ({
  root: __dirname,
  base: './',
  clearScreen: false,
  server: { port: 5173, strictPort: true },
  build: {
    outDir: mode === 'mock' ? 'dist-mock' : 'dist',
    emptyOutDir: true,
    target: 'es2021',
    rollupOptions: {
      input: mode === 'mock' ? resolve(__dirname, 'mock/index.html') : resolve(__dirname, 'index.html'),
    },
  },
  test: {
    environment: 'jsdom',
    include: ['tests/**/*.test.ts'],
  },
}));
